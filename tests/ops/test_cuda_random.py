"""Dropout masks from a counter in device memory (npvit/ops/cuda_random.py), the randomness of a captured step:
the kernel draws what the NumPy formula draws, bit for bit; moving the counter draws another mask (a replay never
repeats the step before); the same state draws the same mask (a captured step equals the uncaptured one given the
same draws); the keep rate is 1 - p. Under Numba's CUDA simulator where no GPU is; skipped without numba-cuda."""
import numpy as np
import pytest

from npvit.backend import cupy_available

if not cupy_available():                    # before numba.cuda is first imported: the simulator
    import numba
    numba.config.ENABLE_CUDASIM = True
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed: pip install -e \".[test]\"")

from npvit.ops.cuda_random import advance, draw_mask, reference_mask  # noqa: E402

# The simulator runs the kernel's 64-bit arithmetic on NumPy scalars, which warn where CUDA wraps around silently
# (the wrap-around is the formula's: reference_mask computes it the same way).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in scalar:RuntimeWarning")

if cupy_available():
    import cupy as XP
    host = XP.asnumpy
else:
    XP, host = np, np.asarray


def state(key=12345, counter=0):
    return XP.asarray(np.array([key, counter], dtype=np.uint64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernel_draws_the_formula_bit_for_bit_and_the_counter_moves_it(dtype):
    s, p, shape = state(), 0.25, (3, 5, 7)
    first = host(draw_mask(XP.empty(shape, dtype), s, p)).copy()
    np.testing.assert_array_equal(first, reference_mask(shape, 12345, 0, p, dtype))
    again = host(draw_mask(XP.empty(shape, dtype), s, p))
    np.testing.assert_array_equal(again, first)                     # the same state: the same mask
    advance(s)
    assert host(s)[1] == 1
    second = host(draw_mask(XP.empty(shape, dtype), s, p))
    np.testing.assert_array_equal(second, reference_mask(shape, 12345, 1, p, dtype))
    assert not np.array_equal(second, first)                        # a replay after advance: another mask
    assert set(np.unique(first)) <= {0.0, dtype(1 / 0.75)}


def test_the_keep_rate_is_one_minus_p_and_keys_differ():
    shape, p = (4000,), 0.3
    m = reference_mask(shape, 7, 0, p)
    assert abs((m > 0).mean() - 0.7) < 0.03                         # 4,000 draws: 4 standard deviations
    assert not np.array_equal(m, reference_mask(shape, 8, 0, p))
    assert abs(float(m.mean()) - 1.0) < 0.05                        # inverted dropout keeps the mean


def test_mistakes_are_refused():
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        draw_mask(XP.empty(4, np.float32), state(), 1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        draw_mask(XP.empty((4, 4), np.float32)[:, ::2], state(), 0.1)
