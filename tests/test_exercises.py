"""The learners' API (npvit.gradcheck.check_pair) and the exercises it grades (npvit/exercises.py): the solutions
pass, wrong answers fail naming the wrong array, and the common mistakes are one line saying what is wrong."""
import importlib.util
import os

import numpy as np
import pytest

from npvit.exercises import SIGNATURES, grade
from npvit.gradcheck import GradcheckError, check_pair
from npvit.ops.reference import REFERENCE as R
from tests.cifar_fixtures import REPO


def solutions():
    spec = importlib.util.spec_from_file_location("solutions", os.path.join(REPO, "notebooks", "solutions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_the_solutions_pass(name, capsys):
    report = grade(name, getattr(solutions(), f"{name}_backward"))
    assert report is not None and report.passed()
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("PASS"), out


def wrong_layernorm(dy, cache, w):
    dx, dw, db = solutions().layernorm_backward(dy, cache, w)
    return dy * w * cache.rstd, dw, db                      # forgot that the mean and variance depend on x


def wrong_softmax(datt, att):
    return att * datt                                        # forgot the row's dot product


def wrong_gelu(dy, cache):
    x, gate, _ = cache
    return dy * gate                                         # forgot x * dgate/dx


def wrong_attention(dctx, cache):
    dqkv = solutions().attention_backward(dctx, cache)
    dqkv[1] = dqkv[1] / cache.scale                          # dk without the scale
    return dqkv


def wrong_block(block, dy):
    return block.layernorm_1.backward(block.attention.backward(                     # forgot the second residual
        block.layernorm_2.backward(block.mlp.backward(dy))))


@pytest.mark.parametrize("name,wrong,array", [("layernorm", wrong_layernorm, "x"), ("softmax", wrong_softmax, "scores"),
                                              ("gelu", wrong_gelu, "x"), ("attention", wrong_attention, "qkv"),
                                              ("block", wrong_block, "x")])
def test_a_wrong_answer_fails_naming_the_wrong_array(name, wrong, array, capsys):
    report = grade(name, wrong)
    assert report is not None and not report.passed()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("FAIL") and f"the gradient of {array}" in last, last


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
    line = one_graded_line(capsys, "ERROR  softmax: your backward raised ValueError")
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
