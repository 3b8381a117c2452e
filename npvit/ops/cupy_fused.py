"""The fused kernel set: the reference's elementwise and row-wise primitives as fused CuPy kernels,
for NVIDIA GPUs.

A model this small is bound by kernel launches on a GPU, not by arithmetic: each CuPy operator
is one launch with its Python and driver overhead, and the reference's LayerNorm alone is a
dozen of them. Here each elementwise chain is one kernel, each row-wise reduction one warp per row:

- GELU (tanh) forward and backward: one ``ElementwiseKernel`` each, the same x * sigmoid(2u) as
  numpy_fast (the erf GELU stays the reference's);
- LayerNorm forward (mean, variance, xhat, the affine map) and the row part of its backward: one
  warp per row, reductions by warp shuffles; dw and db are two column sums;
- softmax with its scale, forward and backward: one warp per row;
- AdamW over the whole flat parameter buffer: one ``ElementwiseKernel``;
- sums over the first axis (the bias gradients of Linear, Conv2d and LayerNorm, the position
  embeddings') as cuBLAS matrix-vector products (``reduce_sum``).

The same signatures and the same results (tested on the device against the reference: float64 to
1e-12, float32 to 1e-5). The table at the end says what is the reference's (the GEMMs are
cuBLAS's) and numpy_fast's. Importing this module needs CuPy (not a GPU); npvit.ops loads it only
when a model asks for ``kernels="fused"``.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from . import numpy_fast, reference
from .contract import GeluCache, LayerNormCache
from .kernelset import KernelSet, own, taken
from .reference import GELU_COEF, SQRT_2_OVER_PI

WARP = 32
ROWS_PER_BLOCK = 8                                  # 8 warps (256 threads) per block, one row each


# -- GELU (tanh) ----------------------------------------------------------------------------------
# y = x s,  s = sigmoid(2u) = 0.5 (1 + tanh(u)),  u = a (x + c x^3),  a = sqrt(2/pi), c = 0.044715
_gelu_fwd = cp.ElementwiseKernel(
    "T x, T a, T c", "T y, T s",
    "s = (T)1 / ((T)1 + exp((T)-2 * a * x * ((T)1 + c * x * x)));  y = x * s;",
    "npvit_gelu_tanh_fwd")
# dy/dx = s + x s (1 - s) 2 du/dx,  2 du/dx = 2a (1 + 3c x^2)
_gelu_bwd = cp.ElementwiseKernel(
    "T dy, T x, T s, T a, T c", "T dx",
    "dx = dy * (s + x * s * ((T)1 - s) * (T)2 * a * ((T)1 + (T)3 * c * x * x));",
    "npvit_gelu_tanh_bwd")


def gelu_forward(x, approximate="tanh"):
    if approximate != "tanh":
        return reference.gelu_forward(x, approximate)
    y, s = _gelu_fwd(x, SQRT_2_OVER_PI, GELU_COEF)
    return y, GeluCache(x, s, approximate)


def gelu_backward(dy, cache):
    if cache.approximate != "tanh":
        return reference.gelu_backward(dy, cache)
    x, s, _ = cache
    return _gelu_bwd(dy, x, s, SQRT_2_OVER_PI, GELU_COEF)


# -- row kernels: one warp per row of a (rows, n) array ------------------------------------------------
_ROW_SOURCE = r"""
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ T warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
#define ROW_SETUP                                                         \
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; \
    const int lane = threadIdx.x % 32;                                    \
    if (row >= rows) return;    /* a whole warp leaves together: shuffles stay full */

// xhat = (x - mean) rstd, rstd = 1/sqrt(var + eps) (biased var), y = xhat w + b
extern "C" __global__ void layernorm_fwd(const T* x, const T* w, const T* b, T* y, T* xhat, T* rstd,
                                          long long rows, int n, T eps) {
    ROW_SETUP
    const T* xr = x + row * n;
    T s = 0;
    for (int i = lane; i < n; i += 32) s += xr[i];
    const T mean = warp_sum(s) / n;
    T v = 0;
    for (int i = lane; i < n; i += 32) { T c = xr[i] - mean; v += c * c; }
    const T r = (T)1 / sqrt(warp_sum(v) / n + eps);
    for (int i = lane; i < n; i += 32) {
        T h = (xr[i] - mean) * r;
        xhat[row * n + i] = h;
        y[row * n + i] = h * w[i] + b[i];
    }
    if (lane == 0) rstd[row] = r;
}

// dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)),  dxhat = dy w
extern "C" __global__ void layernorm_bwd(const T* dy, const T* xhat, const T* rstd, const T* w, T* dx,
                                          long long rows, int n) {
    ROW_SETUP
    const T* dyr = dy + row * n;
    const T* hr = xhat + row * n;
    T s1 = 0, s2 = 0;
    for (int i = lane; i < n; i += 32) { T g = dyr[i] * w[i]; s1 += g; s2 += g * hr[i]; }
    const T m1 = warp_sum(s1) / n, m2 = warp_sum(s2) / n, r = rstd[row];
    for (int i = lane; i < n; i += 32) dx[row * n + i] = r * (dyr[i] * w[i] - m1 - hr[i] * m2);
}

// att = softmax(scale * scores) along the row (in place allowed: out may be scores)
extern "C" __global__ void softmax_fwd(const T* scores, T* att, long long rows, int n, T scale) {
    ROW_SETUP
    const T* sr = scores + row * n;
    T m = sr[lane < n ? lane : 0];
    for (int i = lane + 32; i < n; i += 32) m = fmax(m, sr[i]);
    m = warp_max(m);
    T s = 0;
    for (int i = lane; i < n; i += 32) s += exp(scale * (sr[i] - m));
    const T inv = (T)1 / warp_sum(s);
    for (int i = lane; i < n; i += 32) att[row * n + i] = exp(scale * (sr[i] - m)) * inv;
}

// dscores = scale * att (datt - sum(datt att)) (in place allowed: out may be datt)
extern "C" __global__ void softmax_bwd(const T* datt, const T* att, T* dscores, long long rows, int n, T scale) {
    ROW_SETUP
    const T* dr = datt + row * n;
    const T* ar = att + row * n;
    T s = 0;
    for (int i = lane; i < n; i += 32) s += dr[i] * ar[i];
    s = warp_sum(s);
    for (int i = lane; i < n; i += 32) dscores[row * n + i] = scale * ar[i] * (dr[i] - s);
}
"""

_ROW_KERNELS = {}


def _row_kernel(name, dtype):
    """The row kernel ``name`` compiled for float or double (cached: NVRTC compiles each once)."""
    key = (name, np.dtype(dtype).name)
    if key not in _ROW_KERNELS:
        ctype = {"float32": "float", "float64": "double"}[key[1]]
        module = cp.RawModule(code=f"typedef {ctype} T;\n" + _ROW_SOURCE)
        for kname in ("layernorm_fwd", "layernorm_bwd", "softmax_fwd", "softmax_bwd"):
            _ROW_KERNELS[(kname, key[1])] = module.get_function(kname)
    return _ROW_KERNELS[key]


def _launch(name, rows, *args):
    """Launch a row kernel over ``rows`` rows, one warp each. The first array argument sets the type."""
    dtype = next(a.dtype for a in args if isinstance(a, cp.ndarray))
    grid = (int(rows) + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK
    _row_kernel(name, dtype)((max(grid, 1),), (ROWS_PER_BLOCK * WARP,), args)


def _rows(x):
    return int(np.prod(x.shape[:-1], dtype=np.int64))


# -- sums over the first axis as gemv ---------------------------------------------------------------
_ONES = {}


def column_sum(x2d):
    """(M, n) -> (n,): the sum over rows as the matrix-vector product 1^T x (cuBLAS gemv). CuPy's
    sum(axis=0) gives each of the n (48-192) outputs one block, which leaves most of the GPU idle
    while it walks M = B * 65 rows. The ones vector is kept per (M, dtype)."""
    key = (x2d.shape[0], x2d.dtype.name)
    if key not in _ONES:
        _ONES[key] = cp.ones(x2d.shape[0], dtype=x2d.dtype)
    return _ONES[key] @ x2d


def reduce_sum(x, axis, keepdims=False):
    """Over the first axis as a gemv (``column_sum``); over any other axis, CuPy's sum."""
    if axis != 0 or x.ndim < 2:
        return x.sum(axis=axis, keepdims=keepdims)
    s = column_sum(cp.ascontiguousarray(x).reshape(x.shape[0], -1)).reshape(x.shape[1:])
    return s[None] if keepdims else s


# -- LayerNorm ------------------------------------------------------------------------------------
def layernorm_forward(x, w, b, eps=1e-5):
    x = cp.ascontiguousarray(x)
    n, rows = x.shape[-1], _rows(x)
    y, xhat = cp.empty_like(x), cp.empty_like(x)
    rstd = cp.empty(x.shape[:-1] + (1,), dtype=x.dtype)                 # (..., 1)
    _launch("layernorm_fwd", rows, x, w, b, y, xhat, rstd, np.int64(rows), np.int32(n), x.dtype.type(eps))
    return y, LayerNormCache(xhat, rstd)


def layernorm_backward(dy, cache, w):
    return layernorm_backward_summing(dy, cache, w, column_sum)


def layernorm_backward_summing(dy, cache, w, column_sum):
    """layernorm_backward with the column sums of dw and db by ``column_sum`` ((M, n) -> (n,))."""
    # dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy w;  dw = sum dy xhat, db = sum dy
    xhat, rstd = cache
    dy = cp.ascontiguousarray(dy)
    n, rows = dy.shape[-1], _rows(dy)
    dx = cp.empty_like(dy)
    _launch("layernorm_bwd", rows, dy, xhat, rstd, w, dx, np.int64(rows), np.int32(n))
    dy2d, xhat2d = dy.reshape(-1, n), xhat.reshape(-1, n)              # (M, D): every row
    dw = column_sum(dy2d * xhat2d)
    db = column_sum(dy2d)
    return dx, dw, db


# -- softmax --------------------------------------------------------------------------------------
def softmax_forward(scores, scale=1.0, out=None):
    """softmax(scale * scores) over the last axis; ``out=scores`` works in place."""
    scores = cp.ascontiguousarray(scores)
    att = cp.empty_like(scores) if out is None else out
    rows = _rows(scores)
    _launch("softmax_fwd", rows, scores, att, np.int64(rows), np.int32(scores.shape[-1]), scores.dtype.type(scale))
    return att


def softmax_backward(datt, att, scale=1.0, out=None):
    """scale * att (datt - sum(datt att)); ``out=datt`` works in place."""
    datt = cp.ascontiguousarray(datt)
    d = cp.empty_like(datt) if out is None else out
    rows = _rows(datt)
    _launch("softmax_bwd", rows, datt, att, d, np.int64(rows), np.int32(datt.shape[-1]), datt.dtype.type(scale))
    return d


# -- AdamW over the flat buffer -------------------------------------------------------------------------
# 1 - b1 and 1 - b2 come in computed in double, as the reference's Python floats: 1 - float32(0.999)
# is 0.00099998713, 1.3e-5 off 0.001, and v would drift from the reference's by as much.
_adamw = cp.ElementwiseKernel(
    "T g, T lr, T wd, T b1, T one_minus_b1, T b2, T one_minus_b2, T eps, T inv_bc1, T inv_sqrt_bc2", "T p, T m, T v",
    """
    p = p * ((T)1 - lr * wd);
    m = b1 * m + one_minus_b1 * g;
    v = b2 * v + one_minus_b2 * (g * g);
    p = p - (m / (sqrt(v) * inv_sqrt_bc2 + eps)) * (lr * inv_bc1);
    """,
    "npvit_adamw")


def adamw_update(p, g, m, v, lr, wd, b1, b2, eps, inv_bc1, inv_sqrt_bc2):
    """One AdamW step in place on the flat buffers p, m, v, in one kernel (see reference.adamw_update)."""
    _adamw(g, lr, wd, b1, 1.0 - b1, b2, 1.0 - b2, eps, inv_bc1, inv_sqrt_bc2, p, m, v)


FUSED = KernelSet("fused", backends=("cupy",), primitives={
    **own(reduce_sum, layernorm_forward, layernorm_backward, gelu_forward, gelu_backward, softmax_forward,
          softmax_backward, adamw_update),
    **taken(reference.REFERENCE, "matmul", "log_softmax", "cross_entropy_forward", "cross_entropy_backward",
            "sgd_update"),                                           # the GEMM is cuBLAS's
    **taken(numpy_fast.FAST, "im2col", "col2im"),                    # a reshape for the patch embedding
})
