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
