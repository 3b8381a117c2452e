"""The numba set's own pieces (npvit/ops/numba_cpu.py): its float32 exp, and NaN passing through its loops.
(That it computes the reference's function: tests/ops/test_kernel_sets.py.)"""
import numpy as np
import pytest

from npvit.ops import get_kernels


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
         "softmax": lambda: nb.softmax_forward(x, 0.5)}[op]()
    assert np.isnan(y[1, 2]).any() and np.isfinite(y[0]).all()


# The fused attention core (npvit/ops/numba_attention.py) at the sizes its generated loops treat apart: head sizes
# under, at and over one group of accumulators (12), token counts that leave a remainder after 8-wide vectors and
# after tn's 4 rows, one query ([CLS]) or a few, with and without a dropout mask.
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dropout", [False, True], ids=["", "dropout"])
@pytest.mark.parametrize("B, H, N, hs, Nq", [(2, 4, 65, 12, None), (3, 2, 49, 12, 1), (1, 2, 9, 13, 6),
                                             (2, 1, 6, 16, None)], ids=["article", "cls", "hs13", "hs16"])
def test_numba_fused_attention_equals_the_reference(B, H, N, hs, Nq, dropout, dtype):
    pytest.importorskip("numba")
    from npvit.ops.reference import REFERENCE
    from tests.tolerances import KERNEL_RTOL

    nb = get_kernels("numba")
    assert nb.fused == ("attention_forward", "attention_backward")
    rng = np.random.default_rng(hs)
    qkv = rng.standard_normal((3, B, H, N, hs)).astype(dtype)
    queries = N if Nq is None else Nq
    mask = ((rng.random((B, H, queries, N)) > 0.25) / 0.75).astype(dtype) if dropout else None
    dctx = rng.standard_normal((B, H, queries, hs)).astype(dtype)
    results = []
    for ops in (REFERENCE, nb):
        ctx, cache = ops.attention_forward(qkv, hs ** -0.5, Nq, mask)
        results.append((ctx, cache.att, cache.att_dropped, ops.attention_backward(dctx, cache)))
    for name, ref, fused in zip(("ctx", "att", "att_dropped", "dqkv"), *results):
        assert fused.dtype == ref.dtype and fused.shape == ref.shape, name
        err = np.abs(fused - ref).max() / np.abs(ref).max()
        assert err < KERNEL_RTOL[dtype], (name, err)
