"""The GEMM primitive as our own CUDA kernel, written with numba-cuda: ``matmul`` with the contract's signature
(npvit/ops/contract.py), for the GPU step captured whole in a CUDA graph, where CuPy refuses cuBLAS
(``NotImplementedError: calling cuBLAS API during stream capture``).

One kernel, tiled through shared memory as every textbook GEMM is (and llm.c's first matmul kernels):

    out[z, i, j] = sum_k A[z, i, k] B[z, k, j]         A = a or a^T, B = b or b^T over the last two axes
    block (TILE, TILE) threads computes one TILE x TILE tile of out; for each k-slab of TILE columns,
    the block loads A's (TILE x TILE) and B's (TILE x TILE) pieces into shared memory once, then every
    thread adds its row of the one times its column of the other: each element read from global memory
    once per block instead of once per thread.

The transposed forms the backward passes need (a^T b, a b^T) are index swaps in the loads, no copy; leading axes
(up to two: batch and heads) are the grid's third dimension, a leading axis of 1 (or none, a 2D operand) broadcast.
Arrays may be views with any strides (``out=dqkv[0, :, :, :Nq]``): on a GPU the kernel indexes them as they are
(Numba's simulator takes contiguous host arrays only, so there a view is copied in and out around the kernel).

It runs on anything with ``__cuda_array_interface__`` (CuPy arrays), on CuPy's current stream so that a stream
capture records it; and, with ``NUMBA_ENABLE_CUDASIM=1`` (or numba.config.ENABLE_CUDASIM set before numba.cuda is
first imported), under Numba's CUDA simulator on NumPy arrays, which is how the suite proves it on machines without a
GPU (tests/ops/test_cuda_gemm.py). numba-cuda is imported on first use only.
"""
from __future__ import annotations

import numpy as np

TILE = 16
_KERNELS = {}
cuda = None                     # numba.cuda, imported on first use


def _kernel(dtype):
    """The compiled kernel for one dtype (float32 or float64): the shared tiles' type is fixed at compile time."""
    global cuda                 # a module global, as Numba's simulator expects of the kernels' ``cuda``
    key = str(dtype)
    if key not in _KERNELS:
        import numba
        from numba import cuda

        element = numba.from_dtype(dtype)

        @cuda.jit
        def gemm(a, b, out, transpose_a, transpose_b):
            # a: (Ba, Ha, M, K) or (Ba, Ha, K, M) with transpose_a; b: (Bb, Hb, K, N) or (Bb, Hb, N, K); out (B, H, M, N)
            z = cuda.blockIdx.z
            H = out.shape[1]
            n, h = z // H, z % H
            na, ha = (n if a.shape[0] > 1 else 0), (h if a.shape[1] > 1 else 0)      # broadcast a leading 1
            nb, hb = (n if b.shape[0] > 1 else 0), (h if b.shape[1] > 1 else 0)
            ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
            i = cuda.blockIdx.y * TILE + ty                     # this thread's row of out
            j = cuda.blockIdx.x * TILE + tx                     # and column
            M, N = out.shape[2], out.shape[3]
            K = a.shape[2] if transpose_a else a.shape[3]
            As = cuda.shared.array((TILE, TILE), element)       # A[i0:i0+TILE, k0:k0+TILE]
            Bs = cuda.shared.array((TILE, TILE), element)       # B[k0:k0+TILE, j0:j0+TILE]
            acc = element(0)
            for k0 in range(0, K, TILE):
                k = k0 + tx                                     # A's column this thread loads
                if i < M and k < K:
                    As[ty, tx] = a[na, ha, k, i] if transpose_a else a[na, ha, i, k]
                else:
                    As[ty, tx] = 0
                k = k0 + ty                                     # B's row this thread loads
                if k < K and j < N:
                    Bs[ty, tx] = b[nb, hb, j, k] if transpose_b else b[nb, hb, k, j]
                else:
                    Bs[ty, tx] = 0
                cuda.syncthreads()
                for kk in range(TILE):
                    acc += As[ty, kk] * Bs[kk, tx]
                cuda.syncthreads()
            if i < M and j < N:
                out[n, h, i, j] = acc

        _KERNELS[key] = gemm
    return _KERNELS[key]


def _as4d(x):
    """x (..., r, c) with at most two leading axes, as a 4D view (leading axes of 1 added in front)."""
    if x.ndim > 4 or x.ndim < 2:
        raise ValueError(f"matmul takes arrays of 2 to 4 axes (batch, heads, rows, columns), got shape {x.shape}")
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def matmul(a, b, transpose_a=False, transpose_b=False, out=None):
    """a @ b over the last two axes, batched (and broadcast) over the leading ones; transpose_a / transpose_b
    use a^T / b^T (the transposed forms the backward passes need); ``out``: where to write, or None."""
    from ..backend import get_array_module

    xp = get_array_module(a, b)
    if a.dtype != b.dtype or a.dtype.kind != "f":
        raise TypeError(f"matmul multiplies two arrays of one float dtype, got {a.dtype} and {b.dtype}")
    M, K = (a.shape[-1], a.shape[-2]) if transpose_a else a.shape[-2:]
    Kb, N = (b.shape[-1], b.shape[-2]) if transpose_b else b.shape[-2:]
    if K != Kb:
        raise ValueError(f"matmul: inner dimensions differ ({K} and {Kb}) for shapes {a.shape}, {b.shape} "
                         f"(transpose_a={transpose_a}, transpose_b={transpose_b})")
    lead = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    shape = lead + (M, N)
    if out is None:
        out = xp.empty(shape, dtype=a.dtype)
    elif tuple(out.shape) != shape or out.dtype != a.dtype:
        raise ValueError(f"matmul: out is {out.shape} {out.dtype}, the product is {shape} {a.dtype}")
    a4, b4, out4 = _as4d(a), _as4d(b), _as4d(out)
    grid = (-(-N // TILE), -(-M // TILE), out4.shape[0] * out4.shape[1])
    if grid[2] == 0 or M == 0 or N == 0:
        return out
    simulated = xp is np            # Numba's simulator copies host arrays whole: it takes contiguous ones only
    if simulated:
        a4, b4 = np.ascontiguousarray(a4), np.ascontiguousarray(b4)
    target = np.empty(out4.shape, out4.dtype) if simulated and not out4.flags.c_contiguous else out4
    kernel = _kernel(a.dtype)[grid, (TILE, TILE), _stream(xp)]
    kernel(a4, b4, target, bool(transpose_a), bool(transpose_b))
    if target is not out4:
        out4[...] = target
    return out


def _stream(xp):
    """CuPy's current stream as numba's (so a CUDA-graph capture on it records the kernel); 0 elsewhere (the
    simulator, NumPy arrays). Numba synchronises on the stream a CuPy array names in its
    ``__cuda_array_interface__`` before it launches on it, which a stream capture forbids; the kernels here launch
    on that very stream, so the wait is not needed and is turned off (NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0)."""
    if xp.__name__ != "cupy":
        return 0
    from numba import cuda

    if not _NO_SYNC:
        import importlib

        for name in ("numba.cuda.core.config", "numba.core.config"):    # numba-cuda's own, or numba's older one
            try:
                config = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(config, "CUDA_ARRAY_INTERFACE_SYNC"):
                config.CUDA_ARRAY_INTERFACE_SYNC = False
        _NO_SYNC.append(True)
    return cuda.external_stream(xp.cuda.get_current_stream().ptr)


_NO_SYNC = []           # set once: Numba's synchronisation on consumed CuPy arrays is off
