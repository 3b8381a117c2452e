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
