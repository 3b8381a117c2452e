"""Dropout masks drawn on the device from a counter in device memory, for a training step captured in a CUDA graph.

A captured graph replays the same kernels with the same arguments: a mask drawn from a seed passed as an argument
would repeat the previous step's. So the generator's state lives in a device array, ``state = [key, counter]``
(uint64): every mask kernel reads it, and ``advance`` (one thread, the graph's last kernel) adds one to the counter,
so each replay draws new masks, and a step given the same state draws the same ones as the uncaptured step.

The numbers are counter-based, as Philox (cuRAND's and PyTorch's) is, with SplitMix64 (Steele, Lea and Flood 2014)
as the mixing function for being a few lines anyone can check:

    z = key + (counter * n + i + 1) * 0x9E3779B97F4A7C15            (mod 2^64), element i of a mask of n
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;  z = (z ^ (z >> 27)) * 0x94D049BB133111EB;  z ^= z >> 31
    u = (z >> 40) / 2^24                                              (24 bits: exact in float32)
    mask_i = 1 / (1 - p) if u >= p else 0

``reference_mask`` is the same formula in NumPy, which the tests hold the kernel to bit for bit (under Numba's CUDA
simulator where no GPU is). numba-cuda is imported on first use only.
"""
from __future__ import annotations

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
cuda = None                     # numba.cuda, imported on first use (a module global, as the simulator expects)
_KERNELS = {}


def reference_mask(shape, key, counter, p, dtype=np.float32):
    """The mask the kernel draws for state (key, counter): keep / (1 - p) or 0 per element, in NumPy."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.uint64(counter) * np.uint64(n) + np.arange(1, n + 1, dtype=np.uint64)) \
            * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z ^= z >> np.uint64(31)
    u = (z >> np.uint64(40)).astype(np.float64) / 2.0 ** 24
    scale = 1.0 / (1.0 - p)
    return np.where(u >= p, scale, 0.0).astype(dtype).reshape(shape)


def _kernels():
    global cuda
    if not _KERNELS:
        from numba import cuda, uint64

        @cuda.jit
        def draw(mask, state, p, scale):
            # mask: flat (n,) float; state: (2,) uint64 [key, counter]
            i = cuda.grid(1)
            n = mask.size
            if i < n:
                z = state[0] + (state[1] * uint64(n) + uint64(i + 1)) * uint64(GOLDEN)
                z = (z ^ (z >> uint64(30))) * uint64(MIX1)
                z = (z ^ (z >> uint64(27))) * uint64(MIX2)
                z = z ^ (z >> uint64(31))
                u = float(z >> uint64(40)) / 16777216.0
                mask[i] = scale if u >= p else 0.0

        @cuda.jit
        def advance(state):
            if cuda.grid(1) == 0:
                state[1] += uint64(1)

        _KERNELS.update(draw=draw, advance=advance)
    return _KERNELS


def draw_mask(mask, state, p, stream=0):
    """Fill ``mask`` (a float array on the device, or a NumPy one under the simulator) with a dropout mask of
    drop probability ``p`` from ``state`` ([key, counter], uint64, on the device); the counter is not moved."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"the drop probability must be in [0, 1), got {p}")
    if not mask.flags.c_contiguous:
        raise ValueError("draw_mask fills a C-contiguous array in place")
    flat = mask.reshape(-1)                     # a view of the contiguous mask
    threads = 128
    _kernels()["draw"][-(-flat.size // threads), threads, stream](flat, state, p, 1.0 / (1.0 - p))
    return mask


def advance(state, stream=0):
    """The counter one step on, on the device (the last kernel of a captured step)."""
    _kernels()["advance"][1, 1, stream](state)
    return state

