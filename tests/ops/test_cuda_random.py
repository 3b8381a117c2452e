"""Dropout masks from a counter in device memory (npvit/ops/cuda_random.py), the randomness of a captured step:
the kernels draw what the NumPy formulas draw, bit for bit; moving the counter draws another mask (a replay never
repeats the step before); the same state draws the same mask (a captured step equals the uncaptured one given the
same draws); the keep rate is 1 - p; the generator's draws follow one another on the device and start again at
reset; smallest_k is a stable argsort's first k. Under Numba's CUDA simulator where no GPU is; skipped without numba-cuda."""
import numpy as np
import pytest

from npvit.backend import cupy_available

if not cupy_available():                    # before numba.cuda is first imported: the simulator
    import numba
    numba.config.ENABLE_CUDASIM = True
pytest.importorskip("numba.cuda", reason="numba-cuda is not installed: pip install -e \".[test]\"")

from npvit.ops.cuda_random import (CounterGenerator, advance, draw_mask, reference_mask,  # noqa: E402
                                   reference_uniform, smallest_k)

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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_generator_draws_one_stream_of_numbers_on_the_device(dtype):
    g = CounterGenerator(XP, key=99)
    a, b = host(g.random((6, 5), dtype)), host(g.random((7,), dtype))
    assert a.dtype == dtype and a.shape == (6, 5) and ((0 <= a) & (a < 1)).all()
    np.testing.assert_array_equal(a, reference_uniform((6, 5), 99, 0, dtype))
    np.testing.assert_array_equal(b, reference_uniform((7,), 99, 1, dtype))    # the next draw: the counter moved
    assert host(g.state)[1] == 2
    state = g.state
    np.testing.assert_array_equal(host(g.reset(99).random((6, 5), dtype)), a)  # reset: the same numbers again
    assert g.state is state                                   # in the same device array, which a graph reads
    assert not np.array_equal(host(g.reset(100).random((6, 5), dtype)), a)
    u = reference_uniform((20000,), 5, 3, np.float64)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005


@pytest.mark.parametrize("rows,n,k", [(3, 64, 48), (17, 10, 10), (1, 5, 1)])
def test_smallest_k_is_a_stable_argsorts_first_k(rows, n, k):
    u = np.random.default_rng(0).integers(0, 6, (rows, n)).astype(np.float32)    # many ties
    got = host(smallest_k(XP.asarray(u), k))
    np.testing.assert_array_equal(got, np.argsort(u, axis=1, kind="stable")[:, :k])
    with pytest.raises(ValueError, match="k must be"):
        smallest_k(XP.asarray(u), n + 1)
