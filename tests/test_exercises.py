"""The learners' API (npvit.gradcheck.check_pair) and the exercises it grades (npvit/exercises.py): the solutions
pass, wrong answers fail naming the wrong array, and the common mistakes are one line saying what is wrong."""
import importlib.util
import os

import numpy as np
import pytest

from npvit.exercises import EXERCISES, SIGNATURES, example, grade, kernel_set, train_steps
from npvit.gradcheck import GradcheckError, check_pair
from npvit.ops.reference import REFERENCE as R
from tests.cifar_fixtures import REPO


def solutions():
    spec = importlib.util.spec_from_file_location("solutions", os.path.join(REPO, "notebooks", "solutions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOLVED = {"linear": "linear_backward", "cross_entropy": "cross_entropy_backward", "gelu": "gelu_backward",
          "softmax": "softmax_backward", "layernorm": "layernorm_backward", "embeddings": "embeddings_backward",
          "col2im": "col2im", "attention": "attention_backward", "block": "block_backward"}


def test_the_exercises_go_from_easy_to_hard_each_with_its_time():
    assert list(SIGNATURES) == list(SOLVED)
    assert all(1 <= EXERCISES[n].minutes <= 60 for n in SOLVED)


@pytest.mark.parametrize("name", list(SOLVED))
def test_the_solutions_pass(name, capsys):
    report = grade(name, getattr(solutions(), SOLVED[name]))
    assert report is not None and report.passed()
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"PASS  {name}:") and "right answers give about 1e-10" in out, out


@pytest.mark.parametrize("name", list(SOLVED))
def test_example_hands_the_arguments_of_the_first_case(name):
    args = example(name)
    got = getattr(solutions(), SOLVED[name])(*args)
    assert got is not None


def wrong_linear(dy, cache, w):
    dx, dw, db = solutions().linear_backward(dy, cache, w)
    return dx, dw / len(cache.x2d), db                       # a mean over the rows where the sum belongs


def wrong_cross_entropy(cache):
    return solutions().cross_entropy_backward(cache) * len(cache.q)      # forgot the batch mean's 1/B


def wrong_layernorm(dy, cache, w):
    dx, dw, db = solutions().layernorm_backward(dy, cache, w)
    return dy * w * cache.rstd, dw, db                      # forgot that the mean and variance depend on x


def wrong_softmax(datt, att):
    return att * datt                                        # forgot the row's dot product


def wrong_gelu(dy, cache):
    x, gate, _ = cache
    return dy * gate                                         # forgot x * dgate/dx


def wrong_embeddings(dtokens):
    dpatches, dcls, dpos = solutions().embeddings_backward(dtokens)
    return dtokens[:, :-1], dcls, dpos                       # the last N - 1 tokens are not the patches


def wrong_col2im(dcols, x_shape, stride, padding):
    from npvit.exercises import _overwrite_windows
    return _overwrite_windows(dcols, x_shape, stride, padding)   # = where += belongs


def wrong_attention_doubled_dk(dctx, cache):
    dqkv = solutions().attention_backward(dctx, cache)
    dqkv[1] = 2 * dqkv[1]                                    # a factor of 2 that is not the scale
    return dqkv


def wrong_attention_scale(dctx, cache):
    dqkv = solutions().attention_backward(dctx, cache)
    dqkv[1] = dqkv[1] / cache.scale                          # dk without the scale
    return dqkv


def wrong_attention_head(dctx, cache):
    dqkv = solutions().attention_backward(dctx, cache)
    dqkv[1, :, 2] *= -1                                      # dk of head 2 with the wrong sign
    return dqkv


def wrong_attention_mask(dctx, cache):                       # as if there were no dropout
    return solutions().attention_backward(dctx, cache._replace(mask=None, att_dropped=cache.att))


def wrong_attention_queries(dctx, cache):
    dqkv = solutions().attention_backward(dctx, cache)
    dqkv[0, :, :, cache.num_queries:] = 1.0                   # tokens that asked nothing got a query gradient
    return dqkv


def wrong_block(block, dy):
    return block.layernorm_1.backward(block.attention.backward(                     # forgot both residuals
        block.layernorm_2.backward(block.mlp.backward(dy))))


@pytest.mark.parametrize("name,wrong,hint", [
    ("linear", wrong_linear, "dw is the right one times 0.1 = 1/(B*N), 1 / the number of rows: a mean where a sum "
                             "belongs?"),
    ("cross_entropy", wrong_cross_entropy, "dlogits is the right one times 5 = B: the loss is the batch's mean"),
    ("gelu", wrong_gelu, "dx is wrong: it has the gate's part only"),
    ("softmax", wrong_softmax, "dscores is wrong: it misses the - sum(datt * att) term"),
    ("layernorm", wrong_layernorm, "dx is wrong: it treats the mean and rstd as constants"),
    ("embeddings", wrong_embeddings, "dpatches is wrong: it takes the wrong tokens for the patches: token 0 is [CLS]"),
    ("col2im", wrong_col2im, "in the case 'overlapping windows: kernel 3, stride 2, padding 1': dx is wrong: where "
                             "windows overlap"),
    ("attention", wrong_attention_scale, "dk is the right one times 1.732 = sqrt(hs) = 1/scale: the scale 1/sqrt(hs) is "
                                         "missing"),
    ("attention", wrong_attention_doubled_dk, "dk is the right one times 2 (wrong throughout)"),
    ("attention", wrong_attention_head, "dk is wrong only in head 2 of 0-2"),
    ("attention", wrong_attention_mask, "in the case 'dropout mask (p = 0.3)': dq, dk, dv are wrong: it ignores the "
                                        "dropout mask"),
    ("attention", wrong_attention_queries, "in the case 'only [CLS] asks (num_queries = 1)': dq is off by a constant "
                                           "in each row (along its last axis): a term that is the same for every "
                                           "element of a row is missing or wrong (wrong only in tokens 1-4 of 0-4)"),
    ("block", wrong_block, "dx is wrong: it leaves out the skip paths of both residuals"),
], ids=["linear", "cross_entropy", "gelu", "softmax", "layernorm", "embeddings", "col2im", "attention-scale",
        "attention-doubled", "attention-head", "attention-mask", "attention-queries", "block"])
def test_a_wrong_answer_fails_with_its_hint(name, wrong, hint, capsys):
    report = grade(name, wrong)
    assert report is not None and not report.passed()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"FAIL  {name}") and hint in last, last
    assert "qkv" not in last


def test_an_exercise_not_written_yet_is_said_so(capsys):
    def stub(dy, cache):
        raise NotImplementedError
    assert grade("gelu", stub) is None
    assert "gelu: not written yet" in capsys.readouterr().out


RNG = np.random.default_rng(0)
X, W, B = RNG.standard_normal((2, 5, 12)), 1 + 0.1 * RNG.standard_normal(12), RNG.standard_normal(12)


def layernorm(x, w, b):
    return R.layernorm_forward(x, w, b)


@pytest.mark.parametrize("forward,backward,inputs,message", [
    (layernorm, lambda d, c: R.layernorm_backward(d, c, W), {"x": X.astype(np.float32), "w": W, "b": B},
     "input 'x' is float32: a gradient check needs float64"),
    (layernorm, lambda d, c: R.layernorm_backward(d, c, W)[:2], {"x": X, "w": W, "b": B},
     r"backward returned 2 gradients for the 3 inputs \(x, w, b\)"),
    (layernorm, lambda d, c: (d, R.layernorm_backward(d, c, W)[1][:4], None), {"x": X, "w": W, "b": B},
     r"backward's gradient for 'w' has shape \(4,\), but 'w' has shape \(12,\)"),
    (layernorm, lambda d, c: (d, d[0, 0], None), {"x": X, "w": W, "b": B},
     r"backward returned no gradient \(None\) for 'b'"),
    (lambda x: x * np.random.default_rng().random(), lambda d, c: d, {"x": X},
     "forward is not deterministic: two calls with the same inputs differ"),
    (lambda x: (np.multiply(x, 2, out=x), None), lambda d, c: 2 * d, {"x": X},
     "forward changed its input 'x' in place: work on a copy"),
    (lambda s: (s, None), lambda d, c: d, {"x": X},
     r"forward is called as forward\(x=...\), one keyword per input"),
], ids=["float32", "too-few", "wrong-shape", "missing", "not-deterministic", "in-place", "names"])
def test_the_common_mistakes_are_one_line(forward, backward, inputs, message):
    with pytest.raises(GradcheckError, match=message) as e:
        check_pair(forward, backward, inputs)
    assert "\n" not in str(e.value)


def test_check_pair_leaves_the_callers_arrays_alone():
    x = X.copy()
    report = check_pair(lambda x: R.gelu_forward(x), R.gelu_backward, {"x": x})
    assert report.passed() and np.array_equal(x, X)
    assert "the gradient matches" in report.hint()


# -- the grader never fails a correct answer ------------------------------------------------------------------------
def inplace_softmax(datt, att):
    datt -= (datt * att).sum(axis=-1, keepdims=True)                  # dy updated in place, as one may write it
    datt *= att
    return datt


def inplace_gelu(dy, cache):
    x, gate, _ = cache
    dgate = 2.0 * gate * (1.0 - gate) * np.sqrt(2.0 / np.pi) * (1.0 + 3.0 * 0.044715 * x * x)
    dy *= gate + x * dgate
    return dy


def inplace_layernorm(dy, cache, w):
    xhat, rstd = cache
    dw, db = (dy * xhat).reshape(-1, 12).sum(axis=0), dy.reshape(-1, 12).sum(axis=0)
    dy *= w                                                            # dy becomes dxhat
    dy -= dy.mean(axis=-1, keepdims=True) + xhat * (dy * xhat).mean(axis=-1, keepdims=True)
    dy *= rstd
    return dy, dw, db


def inplace_block(block, dy):
    dy += block.layernorm_2.backward(block.mlp.backward(dy))          # dy becomes dx1
    dy += block.layernorm_1.backward(block.attention.backward(dy))
    return dy


@pytest.mark.parametrize("name,fn", [("softmax", inplace_softmax), ("gelu", inplace_gelu),
                                     ("layernorm", inplace_layernorm), ("block", inplace_block)])
def test_a_correct_backward_that_changes_dy_in_place_passes(name, fn, capsys):
    report = grade(name, fn)
    last = capsys.readouterr().out.splitlines()[-1]
    assert report is not None and report.passed(), last
    assert last.startswith("PASS") and "changed dy in place" in last, last


def one_graded_line(capsys, start):
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(start), out
    return out[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_float32_answer_is_named_float32_never_wrong(seed, capsys):
    def float32_softmax(datt, att):
        return solutions().softmax_backward(datt.astype(np.float32), att.astype(np.float32))
    assert grade("softmax", float32_softmax, seed=seed) is None
    line = one_graded_line(capsys, "NOT GRADED  softmax:")
    assert "is float32: compute in float64 to grade it" in line


@pytest.mark.parametrize("name,fn,message", [
    ("block", lambda block, dy: None, "backward returned no gradient (None) for 'x'"),
    ("block", lambda block, dy: dy[:, 0], "has shape (2, 12), but 'x' has shape (2, 5, 12)"),
    ("gelu", lambda dy, cache: dy * (1 + 5j), "is complex (complex128)"),
    ("gelu", lambda dy, cache: dy.tolist(), "backward returned a list for the one input 'x'"),
    ("gelu", lambda dy, cache: dy > 0, "holds bool, not floating-point numbers"),
    ("layernorm", lambda dy, cache, w: (dy, [1.0] * 12, w), "gradient for 'w' is a list, not an array"),
], ids=["none", "shape", "complex", "nested-list", "bool", "list-in-tuple"])
def test_a_mistake_of_form_is_one_line(name, fn, message, capsys):
    assert grade(name, fn) is None
    assert message in one_graded_line(capsys, f"FAIL  {name}:")


def test_a_learners_own_exception_is_one_line_naming_it_and_where(capsys):
    def broken(datt, att):
        return att @ datt.T                                            # the wrong axes
    assert grade("softmax", broken) is None
    line = one_graded_line(capsys, "ERROR  softmax: your code raised ValueError")
    assert "test_exercises.py: `return att @ datt.T`" in line, line


def test_a_graded_cell_shows_the_table_and_one_line_once(capsys):
    pytest.importorskip("IPython")
    from IPython.core.formatters import DisplayFormatter
    report = grade("softmax", solutions().softmax_backward)
    printed = capsys.readouterr().out
    assert printed.count("PASS") == 1 and printed.splitlines()[0] == "softmax"
    # what a notebook makes of the cell's value: nothing more (ipykernel sends no result for empty data)
    assert DisplayFormatter().format(report) == ({}, {}) and capsys.readouterr().out == ""
    assert repr(report).startswith("<GradcheckReport 'softmax': PASS")
    report.shown = False                                               # a report nobody printed shows its table
    DisplayFormatter().format(report)
    assert capsys.readouterr().out.splitlines()[0] == "softmax"


# -- the capstone: train on your own backward -------------------------------------------------------------------------
def mine(**replace):
    S = solutions()
    fns = dict(linear_backward=S.linear_backward, cross_entropy_backward=S.cross_entropy_backward,
               gelu_backward=S.gelu_backward, softmax_backward=S.softmax_backward,
               layernorm_backward=S.layernorm_backward, col2im=S.col2im, attention_backward=S.attention_backward)
    return kernel_set("mine", **{**fns, **replace})


def test_your_functions_become_a_kernel_set_and_pass_the_whole_model_check():
    from npvit import ViT
    from npvit.gradcheck import check_model_gradients
    from npvit.config import ViTConfig
    kernels = mine()
    assert kernels.origin("attention_backward") == "solutions" and kernels.origin("matmul") == "npvit.ops.reference"
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(0, 5, 2)
    assert check_model_gradients(ViT(ViTConfig.tiny(), dtype="float64", kernels=kernels), x, y).passed()
    # a wrong function shows in the whole-model check, before any training
    wrong = check_model_gradients(ViT(ViTConfig.tiny(), dtype="float64", kernels=mine(softmax_backward=wrong_softmax,
                                                                                attention_backward=None)),
                                  x, y)
    assert not wrong.passed()


def test_training_on_your_kernel_set_equals_npvits_own():
    sample = np.load(os.path.join(REPO, "notebooks", "cifar10_sample.npz"))
    yours = train_steps(mine(), sample["x"], sample["y"], steps=15)
    own = train_steps("reference", sample["x"], sample["y"], steps=15)
    assert yours[-1] < yours[0] - 0.1, yours                    # it learns
    assert np.allclose(yours, own, rtol=1e-12, atol=0), max(abs(a - b) for a, b in zip(yours, own))
