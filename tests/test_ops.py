"""The kernel sets (npvit/ops): every op of fast and numba equals its reference, every reference op passes
the float64 gradient check, and a model gives the same logits and gradients on every set."""
import numpy as np
import pytest

from npvit import ViT, softmax_cross_entropy
from npvit.backend import get_xp, to_device, to_numpy
from npvit.gradcheck import check_reference_ops, small_vit_config
from npvit.ops import get_kernels, kernels_name, numpy_fast, reference
from tests.conftest import FAST_SETS, GRADCHECK_TOL, KERNEL_SETS, rel_err, skip_unless_runs

TOL = {"float64": 1e-12, "float32": 1e-5}
B, N, D, H, K = 2, 5, 12, 3, 7
hs = D // H


def inputs(xp, dtype, seed=0):
    rng = np.random.default_rng(seed)

    def r(*shape, scale=1.0):
        return to_device((scale * rng.standard_normal(shape)).astype(dtype), xp)

    return r, rng


def mask(xp, dtype, shape, seed=1):
    keep = np.random.default_rng(seed).random(shape) >= 0.3
    return to_device((keep / 0.7).astype(dtype), xp)


def cases(xp, dtype, dims=(B, N, D, H)):
    """name -> (forward args, backward extra args builder): each op of the kernel interface."""
    r, rng = inputs(xp, dtype)
    B, N, D, H = dims
    hs = D // H
    qkv = r(3, B, H, N, hs)
    return {
        "linear": (lambda ops: ops.linear_forward(r(B, N, D), r(K, D), r(K)),
                   lambda ops, y, cache: ops.linear_backward(r(*y.shape), cache, r(K, D))),
        "layernorm": (lambda ops: ops.layernorm_forward(r(B, N, D, scale=3.0), 1 + r(D), r(D), 1e-5),
                      lambda ops, y, cache: ops.layernorm_backward(r(*y.shape), cache, 1 + r(D))),
        "gelu_tanh": (lambda ops: ops.gelu_forward(r(B, N, D, scale=3.0), "tanh"),
                      lambda ops, y, cache: ops.gelu_backward(r(*y.shape), cache, "tanh")),
        "gelu_erf": (lambda ops: ops.gelu_forward(r(B, N, D, scale=3.0), "none"),
                     lambda ops, y, cache: ops.gelu_backward(r(*y.shape), cache, "none")),
        "attention": (lambda ops: ops.attention_forward(qkv, hs ** -0.5, None, None),
                      lambda ops, y, cache: ops.attention_backward(r(*y.shape), cache)),
        "attention_cls_dropout": (lambda ops: ops.attention_forward(qkv, hs ** -0.5, 1, mask(xp, dtype, (B, H, 1, N))),
                                  lambda ops, y, cache: ops.attention_backward(r(*y.shape), cache)),
    }


OPS = ["linear", "layernorm", "gelu_tanh", "gelu_erf", "attention", "attention_cls_dropout"]


def assert_set_equals_reference(ops, op, dtype, xp, dims=(B, N, D, H)):
    results = []
    for kernel_set in (reference, ops):
        forward, backward = cases(xp, dtype, dims)[op]  # fresh, identical random inputs for each set
        y, cache = forward(kernel_set)
        grads = backward(kernel_set, y, cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        results.append([y, *grads])
    for i, (ref, fast) in enumerate(zip(*results)):
        assert fast.dtype == np.dtype(dtype), f"{op} output {i} is {fast.dtype}"
        assert fast.shape == ref.shape, (op, i, fast.shape, ref.shape)
        assert rel_err(to_numpy(fast), to_numpy(ref)) < TOL[dtype], (op, i, rel_err(to_numpy(fast), to_numpy(ref)))


@pytest.mark.parametrize("kernels", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_fast_equals_reference(kernels, op, dtype, backend):
    skip_unless_runs(kernels, backend)
    assert_set_equals_reference(get_kernels(kernels, backend), op, dtype, get_xp(backend))


# The fused CUDA kernels: rows shorter and longer than a warp (32), the article's and the large model's sizes.
@pytest.mark.gpu
@pytest.mark.parametrize("dims", [(B, N, D, H), (3, 65, 48, 4), (2, 257, 192, 3)], ids=["tiny", "article", "large"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_fused_equals_reference(op, dtype, dims):
    from npvit.ops import cupy_fused

    assert_set_equals_reference(cupy_fused, op, dtype, get_xp("cupy"), dims)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n", [5, 65, 257])
def test_fused_softmax_with_its_scale_equals_the_reference(dtype, n):
    from npvit.ops import cupy_fused

    xp = get_xp("cupy")
    r, _ = inputs(xp, dtype)
    scores, datt, scale = r(2, 3, 7, n, scale=4.0), r(2, 3, 7, n), 0.3
    att = reference.softmax_forward(scores * scale)
    assert rel_err(cupy_fused.softmax_forward(scores, scale=scale), att) < TOL[dtype]
    assert rel_err(cupy_fused.softmax_forward(scores.copy(), out=None, scale=scale), att) < TOL[dtype]
    in_place = scores.copy()
    assert cupy_fused.softmax_forward(in_place, out=in_place, scale=scale) is in_place
    assert rel_err(in_place, att) < TOL[dtype]
    expected = reference.softmax_backward(datt, att) * scale
    assert rel_err(cupy_fused.softmax_backward(datt, att, scale=scale), expected) < TOL[dtype]
    d = datt.copy()
    cupy_fused.softmax_backward(d, att, out=d, scale=scale)
    assert rel_err(d, expected) < TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("per_element", [False, True], ids=["scalars", "group-vectors"])
def test_fused_adamw_equals_the_reference(dtype, per_element):
    from npvit.ops import cupy_fused

    xp = get_xp("cupy")
    r, rng = inputs(xp, dtype)
    n = 10_001
    state = {name: [r(n), xp.zeros(n, dtype), xp.zeros(n, dtype)] for name in ("reference", "fused")}
    state["fused"] = [a.copy() for a in state["reference"]]
    lr = (xp.abs(r(n)) * 1e-2) if per_element else xp.asarray(3e-3, dtype=dtype)
    wd = (xp.abs(r(n)) * 0.1) if per_element else 0.05
    b1, b2, eps = 0.9, 0.999, 1e-8
    p_initial = state["reference"][0].copy()
    for t in range(1, 4):
        g = r(n)
        args = (lr, wd, b1, b2, eps, xp.asarray(1 / (1 - b1 ** t), dtype=dtype),
                xp.asarray(1 / (1 - b2 ** t) ** 0.5, dtype=dtype))
        reference.adamw_update(*state["reference"][:1], g, *state["reference"][1:], *args)
        cupy_fused.adamw_update(*state["fused"][:1], g, *state["fused"][1:], *args)
    assert rel_err(state["reference"][0], p_initial) > 1e-4   # the steps moved the weights
    for name, a, b in zip(("p", "m", "v"), state["fused"], state["reference"]):
        assert rel_err(a, b) < TOL[dtype], (name, rel_err(a, b))


@pytest.mark.parametrize("kernels", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_softmax_cross_entropy_and_im2col_equal_the_reference(kernels, dtype, backend):
    skip_unless_runs(kernels, backend)
    xp = get_xp(backend)
    fast = get_kernels(kernels, backend)
    r, rng = inputs(xp, dtype)
    scores, datt = r(B, H, N, N, scale=4.0), r(B, H, N, N)
    att = reference.softmax_forward(scores)
    assert rel_err(fast.softmax_forward(scores.copy()), att) < TOL[dtype]
    assert rel_err(fast.softmax_backward(datt.copy(), att), reference.softmax_backward(datt, att)) < TOL[dtype]
    if kernels in ("numba", "fused"):   # softmax(scale * s) and its backward, the scale folded in
        att = reference.softmax_forward(0.3 * scores)
        assert rel_err(fast.softmax_forward(scores.copy(), scale=0.3), att) < TOL[dtype]
        assert rel_err(fast.softmax_backward(datt.copy(), att, scale=0.3),
                       0.3 * reference.softmax_backward(datt, att)) < TOL[dtype]
    x = r(2, 3, 8, 8)
    for k, s, p in ((4, 4, 0), (3, 2, 1)):                       # tiling (a reshape when fast) and general
        cols = reference.im2col(x, k, k, s, p)
        np.testing.assert_array_equal(to_numpy(fast.im2col(x, k, k, s, p)), to_numpy(cols))
        np.testing.assert_array_equal(to_numpy(fast.col2im(cols, x.shape, s, p)),
                                      to_numpy(reference.col2im(cols, x.shape, s, p)))
    logits, labels = r(B, K), to_device(rng.integers(0, K, B), xp)
    for ops in (fast, reference):
        loss, d = softmax_cross_entropy(logits, labels, 0.1, kernels=ops)
        loss_r, d_r = softmax_cross_entropy(logits, labels, 0.1, kernels="reference")
        assert abs(float(loss) - float(loss_r)) < TOL[dtype] and rel_err(to_numpy(d), to_numpy(d_r)) < TOL[dtype]


def test_every_reference_op_passes_the_gradient_check():
    reports = check_reference_ops()
    names = " ".join(r.title for r in reports)
    for op in ("linear", "layernorm", "gelu", "(tanh)", "(erf)", "softmax", "attention", "dropout mask",
               "cross_entropy", "soft targets", "im2col"):
        assert op in names, op
    for report in reports:
        report.assert_ok(GRADCHECK_TOL)
        for row in report.rows:      # a direction along which the function is flat would prove nothing
            assert abs(row.analytic) > 1e-3, (report.title, row)


@pytest.mark.parametrize("kernels", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_model_computes_the_same_on_every_kernel_set(kernels, dtype):
    backend = "cupy" if kernels == "fused" else "numpy"
    skip_unless_runs(kernels, backend)
    c = {**small_vit_config().to_dict(), "hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2,
         "final_layernorm": True}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)).astype(dtype), rng.integers(0, 5, 4)
    out = []
    xp = get_xp(backend)
    for name in (kernels, "reference"):
        model = ViT(c, backend=backend, dtype=dtype, seed=2, kernels=name)
        logits, atts = model(to_device(x, xp), return_attention=True)
        model.zero_grad()
        _, d = softmax_cross_entropy(logits, to_device(y, xp), 0.1, kernels=model.kernels)
        dx = model.backward(d)
        out.append((logits, dx, model.flat_grads.copy(), atts))
    (l1, dx1, g1, a1), (l2, dx2, g2, a2) = out
    for name, a, b in (("logits", l1, l2), ("dx", dx1, dx2), ("gradients", g1, g2)):
        assert rel_err(a, b) < 10 * TOL[dtype], (name, rel_err(a, b))
    assert all(rel_err(p, q) < 10 * TOL[dtype] for p, q in zip(a1, a2))


def test_kernel_sets_are_chosen_by_name_or_module():
    assert get_kernels("reference") is reference and get_kernels() is numpy_fast
    with pytest.raises(ValueError, match="kernels='fused' are CUDA kernels"):
        ViT(small_vit_config(), kernels="fused")
    assert get_kernels(reference) is reference
    with pytest.raises(ValueError, match="unknown kernels 'turbo'"):
        ViT(small_vit_config(), kernels="turbo")
    import types
    with pytest.raises(ValueError, match="a kernel set must define"):
        get_kernels(types.SimpleNamespace(linear_forward=print))
    m = ViT(small_vit_config(), kernels="reference")
    assert all(layer.kernels is reference for _, layer in m.named_layers())
    assert [kernels_name(get_kernels(k)) for k in ("fast", "reference")] == ["fast", "reference"]
    assert kernels_name(types.SimpleNamespace()) == "SimpleNamespace"     # a set of one's own: named by its type
    with pytest.raises(ValueError, match=r"choose one of \['auto', 'numba', 'fused', 'fast', 'reference'\]"):
        get_kernels("turbo")


def test_auto_picks_numba_on_the_cpu_where_numba_is_installed(monkeypatch):
    import npvit.ops as ops
    assert ops.auto_kernels("cupy") == "fused"                      # the numba loops are CPU code
    monkeypatch.setattr(ops, "find_spec", lambda name: None)
    assert kernels_name(get_kernels("auto")) == "fast"              # no Numba: fast, and the start line says so
    pytest.importorskip("numba")
    monkeypatch.undo()
    assert kernels_name(get_kernels("auto")) == "numba" == kernels_name(ViT(small_vit_config()).kernels)


def test_numba_kernels_say_what_they_need(monkeypatch):
    with pytest.raises(ValueError, match="CPU loops for the numpy backend, not 'cupy'"):
        get_kernels("numba", "cupy")
    import sys

    import npvit.ops
    monkeypatch.delitem(sys.modules, "npvit.ops.numba_cpu", raising=False)
    monkeypatch.delattr(npvit.ops, "numba_cpu", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)                # as if Numba were not installed
    with pytest.raises(ValueError, match=r"need Numba, which is not installed \(pip install numba"):
        get_kernels("numba")


def test_numba_float32_exp_is_within_a_few_ulp_from_underflow_to_overflow():
    numba = pytest.importorskip("numba")
    from npvit.ops.numba_cpu import JIT, _exp

    @numba.njit(**{**JIT, "cache": False})
    def exp_each(z, out):
        for i in range(z.size):
            out[i] = _exp(z[i])

    z = np.concatenate([np.linspace(-87, 88, 2_000_001), np.linspace(-1, 1, 200_001)]).astype(np.float32)
    out = np.empty_like(z)
    exp_each(z, out)
    err = np.abs(out / np.exp(z.astype(np.float64)) - 1) / np.finfo(np.float32).eps   # in float32 ulp (about)
    assert err.max() < 4.5 and err[np.abs(z) <= 10].max() < 2.5     # NumPy's own float32 exp: 1.7 here
    exp_each(np.array([0, -200, 200, np.nan, -np.inf, np.inf], np.float32), out[:6])
    assert out[0] == 1                                               # exp(0) is exactly 1
    assert 0 <= out[1] < 2e-38 and 1e38 < out[2] < np.inf            # clamped, never inf or denormal
    assert np.isnan(out[3])                                          # NaN stays NaN: divergence stays visible
    assert 0 <= out[4] < 2e-38 and 1e38 < out[5]


@pytest.mark.parametrize("op", ["gelu", "layernorm", "softmax"])
def test_numba_loops_pass_nan_on(op):
    """A NaN in the input shows in the output (no fast-math "no NaN" assumption), so a run that diverges
    on these kernels is caught by the loss check."""
    pytest.importorskip("numba")
    nb = get_kernels("numba")
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    x[1, 2, 3] = np.nan
    y = {"gelu": lambda: nb.gelu_forward(x)[0], "layernorm": lambda: nb.layernorm_forward(x, np.ones(8, np.float32),
                                                                                          np.zeros(8, np.float32))[0],
         "softmax": lambda: nb.softmax_forward(x, scale=0.5)}[op]()
    assert np.isnan(y[1, 2]).any() and np.isfinite(y[0]).all()


@pytest.mark.parametrize("kernels", FAST_SETS)
def test_fast_sets_take_strided_inputs(kernels):
    """A transposed (not C-contiguous) input gives the reference's result: nothing is written into a copy."""
    backend = "cupy" if kernels == "fused" else "numpy"
    skip_unless_runs(kernels, backend)
    ops, xp = get_kernels(kernels, backend), get_xp(backend)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 8, 5))).transpose(0, 2, 1)     # (2, 5, 8), a strided view
    dy = xp.asarray(rng.standard_normal((2, 5, 8)))
    w, b = xp.asarray(1 + rng.standard_normal(8)), xp.asarray(rng.standard_normal(8))
    assert not x.flags.c_contiguous
    for name, forward, backward in (
            ("gelu", lambda k: k.gelu_forward(x), lambda k, c: (k.gelu_backward(dy, c),)),
            ("layernorm", lambda k: k.layernorm_forward(x, w, b), lambda k, c: k.layernorm_backward(dy, c, w))):
        (y, c), (y_r, c_r) = forward(ops), forward(reference)
        assert rel_err(y, y_r) < TOL["float64"], name
        for g, g_r in zip(backward(ops, c), backward(reference, c_r)):
            assert rel_err(g, g_r) < TOL["float64"], name
