"""The gradient checker itself must be able to fail: a wrong backward is caught and reported."""
import numpy as np
import pytest

from npvit.cli.gradcheck import main
from npvit.gradcheck import check_gradients, check_intermediates, check_layer_gradients, run_steps
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


@pytest.mark.parametrize("projected", [False, True])
def test_the_engine_passes_a_right_gradient_and_fails_a_wrong_one(projected):
    """check_gradients, which every wrapper calls: y = x * sin(w) elementwise, L = sum(r * y)."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    r = rng.standard_normal((4, 5)) if projected else 1.0
    right = {"x": r * np.sin(w), "w": r * x * np.cos(w)}
    assert check_gradients(lambda: x * np.sin(w), {"x": x, "w": w}, right, r=r).worst < 1e-9
    wrong = {"x": right["x"], "w": r * x * np.sin(w)}                  # the derivative of sin taken as sin
    report = check_gradients(lambda: x * np.sin(w), {"x": x, "w": w}, wrong, r=r)
    assert [row.name for row in report.failing()] == ["w"]
    seeded = check_gradients(lambda: x * np.sin(w), {"x": x, "w": w}, wrong, r=r, seed=np.random.default_rng(0))
    assert [row.rel_error for row in seeded.rows] == [row.rel_error for row in report.rows]  # an int or a Generator


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


# check_intermediates: makemore's line-by-line table. A forward as named steps; a right gradient passes, and
# each kind of wrong one (a factor, a shape, a disagreement with autograd) is a failing row.
STEPS = [("h", lambda e: np.tanh(e["x"] @ e["w"])),          # (4, 3)
         ("s", lambda e: e["h"] ** 2),                      # (4, 3)
         ("loss", lambda e: (e["s"] * e["q"]).sum())]       # ()


def _intermediates_case():
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((4, 5)), "w": rng.standard_normal((5, 3)), "q": rng.standard_normal((4, 3))}
    env = run_steps(STEPS, inputs)
    ds = inputs["q"]                                        # loss = sum(s * q)
    dh = ds * 2 * env["h"]                                  # s = h^2
    dpre = dh * (1 - env["h"] ** 2)                         # h = tanh(x @ w)
    return inputs, {"s": ds, "h": dh, "x": dpre @ inputs["w"].T, "w": inputs["x"].T @ dpre}


def test_check_intermediates_passes_the_right_gradients_and_fails_each_wrong_one():
    inputs, grads = _intermediates_case()
    report = check_intermediates(STEPS, inputs, grads, autograd={k: v.copy() for k, v in grads.items()})
    assert report.passed() and all(r.exact for r in report.rows), str(report)
    assert [r.name for r in report.rows] == ["s", "h", "x", "w"]
    text = str(report)
    assert "finite differences" in text and "autograd" in text and "(5, 3)" in text

    wrong = dict(grads, h=grads["h"] * 0.5)                  # a factor of 2 forgotten
    report = check_intermediates(STEPS, inputs, wrong)
    assert not report.passed() and [r.name for r in report.rows if not r.fd_close] == ["h"]

    wrong = dict(grads, w=grads["w"].T)                      # a transposed gradient: the wrong shape
    row = [r for r in check_intermediates(STEPS, inputs, wrong).rows if r.name == "w"][0]
    assert not row.fd_close and row.fd_diff == float("inf")

    theirs = dict(grads, x=grads["x"] + 1e-6)                # right by finite differences, not autograd's
    report = check_intermediates(STEPS, inputs, grads, autograd=theirs)
    row = [r for r in report.rows if r.name == "x"][0]
    assert row.fd_close and not row.exact and not row.close and not report.passed()


def test_run_steps_nudges_an_intermediate_as_soon_as_it_is_made():
    inputs, _ = _intermediates_case()
    delta = np.zeros((4, 3)); delta[1, 2] = 0.25
    base, moved = run_steps(STEPS, inputs), run_steps(STEPS, inputs, ("h", delta))
    assert np.array_equal(moved["h"], base["h"] + delta)
    assert np.array_equal(moved["s"], (base["h"] + delta) ** 2)
    assert np.array_equal(run_steps(STEPS, inputs, ("x", np.ones((4, 5))))["x"], inputs["x"] + 1)


def test_plot_graph_draws_every_node_and_each_edge_with_its_shape():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from npvit.visualize import plot_graph
    nodes = [("x", "", [], "(B, D)"), ("w", "", [], "(D, O)"),
             ("h", "x @ w", ["x", "w"], "(B, O)"), ("loss", "sum", ["h"], "()")]
    ax = plot_graph(nodes, title="a graph")
    texts = [t.get_text() for t in ax.texts]
    for box in ["x", "w", "h\nx @ w", "loss\nsum"]:
        assert box in texts
    assert texts.count("(B, D)") == 1 and texts.count("(D, O)") == 1 and texts.count("(B, O)") == 1
    arrows = [c for c in ax.get_children() if type(c).__name__ == "Annotation"]
    assert len(arrows) == 3 and ax.get_title() == "a graph"
    plt.close(ax.figure)
