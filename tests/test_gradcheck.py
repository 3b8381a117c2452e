"""The gradient checker itself must be able to fail: a wrong backward is caught and reported."""
import numpy as np
import pytest

from npvit.gradcheck import check_layer_gradients, main
from npvit.layers import GELU, Linear, LayerNorm


class TransposedBugLinear(Linear):
    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["weight"] *= 1.001          # a 0.1% error in dW
        return dx


class ForgotMeanLayerNorm(LayerNorm):
    def backward(self, dy):
        # the classic mistake: ignoring that mean and variance depend on x
        xhat, rstd = self.cache[-2], self.cache[-1]               # (both kernel sets end their cache so)
        self.grads["weight"] += (dy * xhat).sum(axis=tuple(range(dy.ndim - 1)))
        self.grads["bias"] += dy.sum(axis=tuple(range(dy.ndim - 1)))
        return dy * self.params["weight"] * rstd


class TanhGeluWithErfBackward(GELU):
    def backward(self, dy):
        x = self.cache[0]
        return dy * 0.5 * (1 + np.tanh(0.0 * x))       # wrong on purpose: the erf form's Phi at x = 0


@pytest.mark.parametrize("layer,bad", [(TransposedBugLinear(6, 4), "weight"), (ForgotMeanLayerNorm(6), "x"),
                                       (TanhGeluWithErfBackward(), "x")])
def test_wrong_backward_is_caught(layer, bad):
    report = check_layer_gradients(layer, np.random.default_rng(0).standard_normal((3, 6)))
    assert not report.passed(1e-6)
    assert {r.name: r.rel_error for r in report.rows}[bad] > 1e-4
    with pytest.raises(AssertionError, match="gradient check failed"):
        report.assert_ok(1e-6)


def test_checker_does_not_modify_the_callers_layer():
    layer = Linear(6, 4).astype(np.float32)
    before = layer.params["weight"].copy()
    check_layer_gradients(layer, np.ones((2, 6), np.float32))
    assert layer.params["weight"].dtype == np.float32
    np.testing.assert_array_equal(layer.params["weight"], before)


def test_cli_checks_every_layer_and_parameter(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ["Conv2d", "im2col", "PatchEmbeddings", "Embeddings", "LayerNorm", "MultiHeadSelfAttention",
                 "GELU (tanh)", "GELU (erf)", "MLP", "Block", "softmax_cross_entropy", "classifier.weight",
                 "encoder.blocks.1.attention.qkv_projection.weight", "all passed"]:
        assert name in out, name
