"""The GEMM kernel written with numba-cuda (npvit/ops/cuda_gemm.py), against NumPy's matmul: every transposed form
the backward passes use, 2D and batched operands, broadcast leading axes, ``out`` views with strides, tiles that do
not divide the shapes, float32 and float64.

Where no GPU is present it runs under Numba's CUDA simulator (each block's threads as Python threads: small shapes
only); on a GPU machine on CuPy arrays, which is where it is timed. Skipped with the reason where numba-cuda is
absent (it is in the test extra).
"""
import numpy as np
import pytest

from npvit.backend import cupy_available

if not cupy_available():                    # before numba.cuda is first imported: the simulator
    import numba
    numba.config.ENABLE_CUDASIM = True
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed: pip install -e \".[test]\"")

from npvit.ops.cuda_gemm import TILE, matmul  # noqa: E402

if cupy_available():            # on a GPU: CuPy arrays, as the GPU kernel set would give it
    import cupy as XP
    host = XP.asnumpy
else:
    XP, host = np, np.asarray

# (a's shape, b's shape, transpose_a, transpose_b): Linear forward x W^T, its dW = dy^T x and dx = dy W; the
# attention's q k^T, att v, att^T dctx (over batch and heads); a 2D operand broadcast over batched ones.
CASES = [((20, 7), (9, 7), False, True), ((20, 9), (20, 7), True, False), ((20, 9), (9, 7), False, False),
         ((2, 3, 17, 5), (2, 3, 17, 5), False, True), ((2, 3, 17, 17), (2, 3, 17, 5), False, False),
         ((2, 3, 17, 17), (2, 3, 17, 5), True, False), ((2, 1, 6, 4), (3, 4, 5), False, False),
         ((TILE + 1, 2 * TILE + 3), (2 * TILE + 3, 3), False, False)]


def arrays(shape_a, shape_b, dtype, xp=np):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shape_a).astype(dtype), rng.standard_normal(shape_b).astype(dtype)
    return xp.asarray(a), xp.asarray(b)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("sa,sb,ta,tb", CASES)
def test_the_kernel_equals_numpy_matmul(sa, sb, ta, tb, dtype, tol):
    a, b = arrays(sa, sb, dtype)
    want = np.matmul(a.swapaxes(-1, -2) if ta else a, b.swapaxes(-1, -2) if tb else b)
    got = matmul(XP.asarray(a), XP.asarray(b), transpose_a=ta, transpose_b=tb)
    assert got.shape == want.shape and got.dtype == dtype
    np.testing.assert_allclose(host(got), want, rtol=tol, atol=tol * np.abs(want).max())


def test_out_may_be_a_strided_view_and_nothing_else_is_written():
    """As the attention backward writes dq into dqkv[0, :, :, :Nq]: the rows outside the view stay as they were."""
    q, k = arrays((2, 3, 17, 5), (2, 3, 17, 5), np.float64)
    dscores = np.random.default_rng(1).standard_normal((2, 3, 9, 17))
    dqkv = XP.full((3, 2, 3, 17, 5), 7.0)
    got = matmul(XP.asarray(dscores), XP.asarray(k), out=dqkv[0, :, :, :9])
    assert got.base is not None                 # the view itself came back, written in place
    written = host(dqkv)
    np.testing.assert_allclose(written[0, :, :, :9], dscores @ k, rtol=1e-12)
    assert (written[0, :, :, 9:] == 7).all() and (written[1:] == 7).all()


def test_mistakes_are_refused_naming_the_shapes():
    a, b = arrays((4, 5), (6, 3), np.float64)
    with pytest.raises(ValueError, match=r"inner dimensions differ \(5 and 6\)"):
        matmul(a, b)
    with pytest.raises(ValueError, match="out is"):
        matmul(a, b[:5], out=np.empty((4, 4)))
    with pytest.raises(TypeError, match="one float dtype"):
        matmul(a, b[:5].astype(np.float32))
    with pytest.raises(ValueError, match="2 to 4 axes"):
        matmul(np.ones((1, 1, 1, 2, 2)), np.ones((2, 2)))
