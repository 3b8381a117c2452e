"""Random numbers drawn on the device from a counter in device memory, for a training step captured in a CUDA graph.

A captured graph replays the same kernels with the same arguments: numbers drawn from a seed passed as an argument
would repeat the previous step's. So a generator's state lives in a device array, ``state = [key, counter]``
(uint64): every draw kernel reads it, and ``advance`` (one thread, launched after each draw) adds one to the
counter, so each draw in a step, and each replay of the step, gets numbers of its own; the host sets the key
(``CounterGenerator.reset``) before a step, outside the graph, and a step given the same state draws the same
numbers as the uncaptured step.

The numbers are counter-based, as Philox (cuRAND's and PyTorch's) is, with SplitMix64 (Steele, Lea and Flood 2014)
as the mixing function for being a few lines anyone can check. Draw ``counter`` of a generator, element i:

    mix(z) = z ^ (z >> 31) of  z = (z ^ (z >> 27)) * 0x94D049BB133111EB  of  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    s   = mix(key + (counter + 1) * 0x9E3779B97F4A7C15)               (mod 2^64): this draw's stream
    z   = mix(s + (i + 1) * 0x9E3779B97F4A7C15)
    u_i = (z >> 40) / 2^24                                             (24 bits: exact in float32), in [0, 1)

A dropout mask of drop probability p is ``1 / (1 - p) if u_i >= p else 0``. ``reference_uniform`` and
``reference_mask`` are the same formulas in NumPy, which the tests hold the kernels to bit for bit (under Numba's
CUDA simulator where no GPU is). ``smallest_k`` picks, per row, the indices of its k smallest numbers in order (a
stable argsort's first k, without a sort): PatchDropout's choice of patches. numba-cuda is imported on first use.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
THREADS = 128
cuda = None                     # numba.cuda, imported on first use (a module global, as the simulator expects)
_KERNELS = {}


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def reference_uniform(shape, key, counter, dtype=np.float32):
    """The numbers in [0, 1) that draw ``counter`` of a generator keyed ``key`` gives, in NumPy."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        s = _mix(np.uint64(key) + (np.uint64(counter) + np.uint64(1)) * np.uint64(GOLDEN))
        z = _mix(s + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN))
    return ((z >> np.uint64(40)).astype(np.float64) / 2.0 ** 24).astype(dtype).reshape(shape)


def reference_mask(shape, key, counter, p, dtype=np.float32):
    """The dropout mask (keep / (1 - p) or 0 per element) that ``draw_mask`` draws for state (key, counter)."""
    u = reference_uniform(shape, key, counter, np.float64)
    return np.where(u >= p, 1.0 / (1.0 - p), 0.0).astype(dtype)


def _kernels():
    global cuda
    if not _KERNELS:
        from numba import cuda, uint64

        @cuda.jit(device=True)
        def mix(z):
            z = (z ^ (z >> uint64(30))) * uint64(MIX1)
            z = (z ^ (z >> uint64(27))) * uint64(MIX2)
            return z ^ (z >> uint64(31))

        @cuda.jit(device=True)
        def uniform(state, i):
            s = mix(state[0] + (state[1] + uint64(1)) * uint64(GOLDEN))
            z = mix(s + uint64(i + 1) * uint64(GOLDEN))
            return float(z >> uint64(40)) / 16777216.0

        @cuda.jit
        def draw_uniform(u, state):
            # u: flat (n,) float; state: (2,) uint64 [key, counter]; a grid-stride loop over the elements
            for i in range(cuda.grid(1), u.size, cuda.gridsize(1)):
                u[i] = uniform(state, i)

        @cuda.jit
        def draw_mask(mask, state, p, scale):
            for i in range(cuda.grid(1), mask.size, cuda.gridsize(1)):
                mask[i] = scale if uniform(state, i) >= p else 0.0

        @cuda.jit
        def advance(state):
            if cuda.grid(1) == 0:
                state[1] += uint64(1)

        @cuda.jit
        def smallest_k(u, k, out):
            # u (R, n), out (R, k): one thread per (row, j); j's rank among its row's numbers (ties by index)
            r, j = cuda.grid(2)
            R, n = u.shape
            if r < R and j < n:
                x = u[r, j]
                rank = 0
                for m in range(n):
                    y = u[r, m]
                    if y < x or (y == x and m < j):
                        rank += 1
                if rank < k:
                    out[r, rank] = j

        _KERNELS.update(draw_uniform=draw_uniform, draw_mask=draw_mask, advance=advance, smallest_k=smallest_k)
    return _KERNELS


def _grid(n, a):
    """(blocks, threads) for n elements: a thread each on a GPU; under the simulator, which runs every thread as a
    Python thread, one block of 32 that loops over them."""
    return (1, 32) if isinstance(a, np.ndarray) else (max(1, -(-n // THREADS)), THREADS)


def draw_mask(mask, state, p, stream=None):
    """Fill ``mask`` (a float array on the device, or a NumPy one under the simulator) with a dropout mask of
    drop probability ``p`` from ``state`` ([key, counter], uint64, on the device); the counter is not moved."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"the drop probability must be in [0, 1), got {p}")
    if not mask.flags.c_contiguous:
        raise ValueError("draw_mask fills a C-contiguous array in place")
    flat = mask.reshape(-1)                     # a view of the contiguous mask
    _kernels()["draw_mask"][(*_grid(flat.size, mask), _on(stream, mask))](flat, state, p, 1.0 / (1.0 - p))
    return mask


def advance(state, stream=None):
    """The counter one step on, on the device."""
    _kernels()["advance"][1, 1, _on(stream, state)](state)
    return state


def smallest_k(u, k, stream=None):
    """u (R, n) -> (R, k) int64: each row's indices of its k smallest numbers, smallest first (equal numbers by
    index: ``argsort(u, kind="stable")[:, :k]``), one thread per number, no sort."""
    R, n = u.shape
    if not 0 < k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    out = get_array_module(u).empty((R, k), dtype=np.int64)
    _kernels()["smallest_k"][(-(-R // 8), -(-n // 16)), (8, 16), _on(stream, u)](u, k, out)
    return out


class CounterGenerator:
    """A random stream whose state lives on the device, ``[key, counter]``: ``random(shape, dtype)`` draws uniform
    numbers in [0, 1) (as a NumPy Generator's ``random``) by one kernel and moves the counter by another, both on
    the device, so a captured graph draws new numbers at each replay. ``reset(key)`` writes ``[key, 0]`` into the
    same device array (from the host: outside a capture); ``smallest_k`` is the kernel above."""

    def __init__(self, xp, key=0):
        self.xp = xp
        self.state = xp.zeros(2, dtype=np.uint64)
        self.reset(key)

    def reset(self, key):
        """Start the stream ``key`` again from its first draw; returns self."""
        self.state[...] = self.xp.asarray(np.array([int(key) % 2 ** 64, 0], dtype=np.uint64))
        return self

    def random(self, shape, dtype=np.float64):
        u = self.xp.empty(shape, dtype=dtype)
        flat = u.reshape(-1)
        _kernels()["draw_uniform"][(*_grid(flat.size, u), _on(None, u))](flat, self.state)
        advance(self.state)
        return u

    def smallest_k(self, u, k):
        return smallest_k(u, k)


def _on(stream, a):
    """The stream to launch on: the one given, else CuPy's current stream (so that a stream capture records the
    launch), or 0 under the simulator (NumPy arrays)."""
    if stream is not None:
        return stream
    from .cuda_gemm import _stream
    return _stream(get_array_module(a))
