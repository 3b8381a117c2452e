"""The capturable kernel set: the fused set with no cuBLAS in it, so that a CUDA graph can record a whole training
step (npvit/training/capture.py). CuPy refuses cuBLAS during a stream capture (``NotImplementedError: calling
cuBLAS API during stream capture is currently unsupported``), and fused calls it for every GEMM and for its sums over
rows. Here:

- the GEMMs are our own tiled kernel (npvit/ops/cuda_gemm.py, numba-cuda, launched on CuPy's current stream);
- the sums over the first axis (bias gradients, LayerNorm's dw and db) are CuPy's own reduction kernels;
- everything else is fused's (GELU, LayerNorm, softmax, AdamW: CuPy kernels, which a capture records).

The same signatures and, up to the order of the sums, the same results: tested against the reference on the device
like every set, and its GEMM under Numba's CUDA simulator on the CPU (tests/ops/test_cuda_gemm.py). Uncaptured it is
slower than fused (cuBLAS beats the textbook tiling); it exists for the graph, where one replay replaces the step's
hundreds of launches. Importing it needs CuPy; its GEMM needs numba-cuda.
"""
from __future__ import annotations

import cupy as cp

from . import cupy_fused
from .cuda_gemm import matmul
from .kernelset import KernelSet, own, taken


def _column_sum(x2d):
    """(M, n) -> (n,): CuPy's reduction over the rows (no cuBLAS)."""
    return x2d.sum(axis=0)


def reduce_sum(x, axis, keepdims=False):
    """CuPy's reduction kernel over any axis (fused's, over the first axis, is a cuBLAS gemv)."""
    return cp.ascontiguousarray(x).sum(axis=axis, keepdims=keepdims)


def layernorm_backward(dy, cache, w):
    return cupy_fused.layernorm_backward_summing(dy, cache, w, _column_sum)


CAPTURABLE = KernelSet("capturable", backends=("cupy",), primitives={
    **own(matmul, reduce_sum, layernorm_backward),                   # matmul: npvit/ops/cuda_gemm.py
    **taken(cupy_fused.FUSED, "layernorm_forward", "gelu_forward", "gelu_backward", "softmax_forward",
            "softmax_backward", "adamw_update", "log_softmax", "cross_entropy_forward", "cross_entropy_backward",
            "sgd_update", "im2col", "col2im"),
})
