"""Every kernel set (npvit/ops) computes the reference's function: each primitive and composite of fast,
numba and fused equals the reference's on the same inputs (float64 to 1e-12, float32 to 1e-5), and a whole
model gives the same logits, attention maps and gradients on every set."""
import numpy as np
import pytest

from npvit import ViT, softmax_cross_entropy
from npvit.backend import get_xp, to_device, to_numpy
from npvit.config import ViTConfig
from npvit.ops import BY_NAME, get_kernels
from npvit.ops.cases import BY_NAME as CASES
from npvit.ops.cases import DIMS
from npvit.ops.reference import REFERENCE
from tests.helpers import FAST_SETS, rel_err, skip_unless_runs
from tests.tolerances import KERNEL_RTOL

B, N, D, H, K = 2, 5, 12, 3, 7


def random_arrays(xp, dtype, seed=0):
    """r(*shape, scale=1): a random array on ``xp``'s device; the same sequence for the same seed."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=1.0):
        return to_device((scale * rng.standard_normal(shape)).astype(dtype), xp)

    return r, rng


# The forward/backward pairs of the contract: npvit/ops/cases.py, the catalogue the gradient checks walk too.
OPS = list(CASES)


def assert_set_equals_reference(ops, op, dtype, xp, dims=DIMS):
    results = []
    for kernel_set in (REFERENCE, ops):
        r, _ = random_arrays(xp, dtype)                 # fresh, identical random inputs for each set
        case = CASES[op]
        inputs = case.inputs(r, dims)
        y, cache = case.forward(kernel_set, **inputs)
        grads = case.backward(kernel_set, r(*y.shape), cache, **inputs)
        results.append([y, *(grads if isinstance(grads, tuple) else (grads,))])
    for i, (ref, fast) in enumerate(zip(*results)):
        assert fast.dtype == np.dtype(dtype), f"{op} output {i} is {fast.dtype}"
        assert fast.shape == ref.shape, (op, i, fast.shape, ref.shape)
        err = rel_err(fast, ref)
        assert err < KERNEL_RTOL[dtype], (op, i, err)


@pytest.mark.parametrize("kernels", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_every_set_equals_the_reference(kernels, op, dtype, backend):
    skip_unless_runs(kernels, backend)
    assert_set_equals_reference(get_kernels(kernels, backend), op, dtype, get_xp(backend))


# The fused CUDA kernels: rows shorter and longer than a warp (32), the article's and the large model's sizes.
@pytest.mark.gpu
@pytest.mark.parametrize("dims", [(B, N, D, H), (3, 65, 48, 4), (2, 257, 192, 3)], ids=["tiny", "article", "large"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", OPS)
def test_fused_equals_the_reference_at_every_size(op, dtype, dims):
    assert_set_equals_reference(get_kernels("fused", "cupy"), op, dtype, get_xp("cupy"), dims)


@pytest.mark.parametrize("kernels", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_in_place_cross_entropy_and_im2col_equal_the_reference(kernels, dtype, backend):
    skip_unless_runs(kernels, backend)
    xp = get_xp(backend)
    fast = get_kernels(kernels, backend)
    r, rng = random_arrays(xp, dtype)
    scores, datt = r(B, H, N, N, scale=4.0), r(B, H, N, N)
    for scale in (1.0, 0.3):
        att = REFERENCE.softmax_forward(scores, scale)
        in_place = scores.copy()
        assert fast.softmax_forward(in_place, scale, out=in_place) is in_place      # out=scores: in place
        assert rel_err(in_place, att) < KERNEL_RTOL[dtype]
        assert rel_err(fast.softmax_forward(scores, scale), att) < KERNEL_RTOL[dtype]
        expected = REFERENCE.softmax_backward(datt, att, scale)
        d = datt.copy()
        assert fast.softmax_backward(d, att, scale, out=d) is d
        assert rel_err(d, expected) < KERNEL_RTOL[dtype]
    x = r(2, 3, 8, 8)
    for k, s, p in ((4, 4, 0), (3, 2, 1)):                       # tiling (a reshape when fast) and general
        cols = REFERENCE.im2col(x, k, k, s, p)
        np.testing.assert_array_equal(to_numpy(fast.im2col(x, k, k, s, p)), to_numpy(cols))
        np.testing.assert_array_equal(to_numpy(fast.col2im(cols, x.shape, s, p)),
                                      to_numpy(REFERENCE.col2im(cols, x.shape, s, p)))
    for axis in (0, 1, -1):
        assert rel_err(fast.reduce_sum(scores, axis), REFERENCE.reduce_sum(scores, axis)) < KERNEL_RTOL[dtype]
        kept = fast.reduce_sum(scores, axis, keepdims=True)
        assert kept.shape == REFERENCE.reduce_sum(scores, axis, keepdims=True).shape
    logits, labels = r(B, K), to_device(rng.integers(0, K, B), xp)
    loss, d = softmax_cross_entropy(logits, labels, 0.1, kernels=fast)
    loss_r, d_r = softmax_cross_entropy(logits, labels, 0.1, kernels="reference")
    assert abs(float(loss) - float(loss_r)) < KERNEL_RTOL[dtype] and rel_err(d, d_r) < KERNEL_RTOL[dtype]


@pytest.mark.parametrize("kernels", FAST_SETS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_model_computes_the_same_on_every_kernel_set(kernels, dtype):
    backend = BY_NAME[kernels].backends[0]
    skip_unless_runs(kernels, backend)
    c = {**ViTConfig.tiny().to_dict(), "hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.2,
         "final_layernorm": True}
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)).astype(dtype), rng.integers(0, 5, 4)
    out = []
    xp = get_xp(backend)
    for name in (kernels, "reference"):
        for pooling in ("cls", "mean"):
            model = ViT({**c, "pooling": pooling}, backend=backend, dtype=dtype, seed=2, kernels=name)
            logits, atts = model(to_device(x, xp), return_attention=True)
            model.zero_grad()
            _, d = softmax_cross_entropy(logits, to_device(y, xp), 0.1, kernels=model.kernels)
            dx = model.backward(d)
            out.append((logits, dx, model.flat.grads.copy(), atts))
    for (l1, dx1, g1, a1), (l2, dx2, g2, a2) in zip(out[:2], out[2:]):
        for name, a, b in (("logits", l1, l2), ("dx", dx1, dx2), ("gradients", g1, g2)):
            assert rel_err(a, b) < 10 * KERNEL_RTOL[dtype], (name, rel_err(a, b))
        assert all(rel_err(p, q) < 10 * KERNEL_RTOL[dtype] for p, q in zip(a1, a2))


@pytest.mark.parametrize("kernels", FAST_SETS)
def test_sets_take_strided_inputs(kernels):
    """A transposed (not C-contiguous) input gives the reference's result: nothing is written into a copy."""
    backend = BY_NAME[kernels].backends[0]
    skip_unless_runs(kernels, backend)
    ops, xp = get_kernels(kernels, backend), get_xp(backend)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 8, 5))).transpose(0, 2, 1)     # (2, 5, 8), a strided view
    dy = xp.asarray(rng.standard_normal((2, 5, 8)))
    w, b = xp.asarray(1 + rng.standard_normal(8)), xp.asarray(rng.standard_normal(8))
    assert not x.flags.c_contiguous
    for name, forward, backward in (
            ("gelu", lambda k: k.gelu_forward(x), lambda k, c: (k.gelu_backward(dy, c),)),
            ("layernorm", lambda k: k.layernorm_forward(x, w, b), lambda k, c: k.layernorm_backward(dy, c, w)),
            ("linear", lambda k: k.linear_forward(x, w[None, :].repeat(3, 0), b[:3]),
             lambda k, c: k.linear_backward(dy[..., :3], c, w[None, :].repeat(3, 0)))):
        (y, c), (y_r, c_r) = forward(ops), forward(REFERENCE)
        assert rel_err(y, y_r) < KERNEL_RTOL["float64"], name
        for g, g_r in zip(backward(ops, c), backward(REFERENCE, c_r)):
            assert rel_err(g, g_r) < KERNEL_RTOL["float64"], name
