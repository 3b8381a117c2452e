"""The fast kernel set: the reference's primitives rewritten for NumPy's one-core elementwise work.

The same signatures and the same results (tested: float64 to 1e-12, float32 to 1e-5); what changes
is how many passes over memory each takes. The tricks:
- sums as BLAS matrix-vector products (``reduce_sum``): over short rows (65 tokens, 48 features), and
  over the many rows of a bias gradient, both faster than NumPy's reductions;
- in-place updates of temporaries the function itself made (a centred copy, the softmax's input when
  the caller passes it as ``out``), instead of a new array per operator;
- the tanh GELU as x * sigmoid(2u): exp is cheaper than tanh, and 1 + tanh(u) loses digits to
  cancellation for negative u in float32;
- the softmax backward's row dots by einsum (no temporary of the scores' size);
- im2col is a strided view of the windows (a pure reshape when they tile the image: the patch embedding).
The table at the end says what is the reference's. Measured speeds: benchmarks/README.md.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from . import reference
from .contract import GeluCache, LayerNormCache
from .kernelset import KernelSet, own, taken
from .reference import GELU_COEF, SQRT_2_OVER_PI


# -- sums -------------------------------------------------------------------------------------------
def reduce_sum(x, axis, keepdims=False):
    """Over the last axis as the matrix-vector product x 1, over the first of a C-contiguous array (the bias
    gradients: sums over M = B N rows) as 1^T x, both BLAS gemv; over any other axis, NumPy's sum."""
    xp = get_array_module(x)
    if axis in (-1, x.ndim - 1):
        s = x @ xp.ones(x.shape[-1], dtype=x.dtype)              # (...,)
        return s[..., None] if keepdims else s
    if axis == 0 and x.ndim >= 2 and x.flags.c_contiguous:
        s = (xp.ones(x.shape[0], dtype=x.dtype) @ x.reshape(x.shape[0], -1)).reshape(x.shape[1:])
        return s[None] if keepdims else s
    return x.sum(axis=axis, keepdims=keepdims)


def row_mean(x):
    """mean over the last axis, keepdims: (..., n) -> (..., 1)."""
    return reduce_sum(x, -1, keepdims=True) / x.shape[-1]


# -- LayerNorm --------------------------------------------------------------------------------
def layernorm_forward(x, w, b, eps=1e-5):
    xp = get_array_module(x)
    xhat = x - row_mean(x)                                       # centred; becomes xhat in place
    var = row_mean(xhat * xhat)                                  # (..., 1) biased variance, as torch
    var += eps
    rstd = 1.0 / xp.sqrt(var)                                    # (..., 1)
    xhat *= rstd                                                 # (..., D)
    y = xhat * w
    y += b
    return y, LayerNormCache(xhat, rstd)


def layernorm_backward(dy, cache, w):
    # the reference's chain, collected: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    xp = get_array_module(dy)
    xhat, rstd = cache
    D = xhat.shape[-1]
    dy2d, xhat2d = dy.reshape(-1, D), xhat.reshape(-1, D)       # (M, D): every row
    dw = xp.einsum("mi,mi->i", dy2d, xhat2d)                     # sum over rows of dy * xhat
    db = dy2d.sum(axis=0)
    dxhat = dy * w
    dx = dxhat - row_mean(dxhat)
    dx -= xhat * row_mean(dxhat * xhat)
    dx *= rstd
    return dx, dw, db


# -- GELU (tanh) as x * sigmoid(2u); the erf GELU is the reference's -----------------------------------
def gelu_forward(x, approximate="tanh"):
    if approximate != "tanh":
        return reference.gelu_forward(x, approximate)
    xp = get_array_module(x)
    # y = x gate,  gate = 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)),  u = x (a + b x^2);
    # in one buffer, constants folded; x*x, never x**3 (float32 power is slow).
    gate = x * x
    gate *= -2.0 * SQRT_2_OVER_PI * GELU_COEF                    # -2 b x^2
    gate -= 2.0 * SQRT_2_OVER_PI                                 # -2 (a + b x^2)
    gate *= x                                                    # -2u
    with np.errstate(over="ignore"):                             # exp(-2u) = inf for x < -10: gate = 0, y = -0, exact
        xp.exp(gate, out=gate)
    gate += 1.0
    xp.reciprocal(gate, out=gate)                                # gate = sigmoid(2u)
    return x * gate, GeluCache(x, gate, approximate)


def gelu_backward(dy, cache):
    if cache.approximate != "tanh":
        return reference.gelu_backward(dy, cache)
    # dgate/du = 2 gate (1 - gate):  dy/dx = gate + x gate (1 - gate) 2 du/dx,  du/dx = a + 3 b x^2
    x, gate, _ = cache
    dudx2 = x * x                                                # 2 du/dx, in place
    dudx2 *= 6.0 * SQRT_2_OVER_PI * GELU_COEF
    dudx2 += 2.0 * SQRT_2_OVER_PI
    g = 1.0 - gate
    g *= gate
    g *= x
    g *= dudx2
    g += gate
    g *= dy
    return g


# -- softmax ------------------------------------------------------------------------------------
def softmax_forward(scores, scale=1.0, out=None):
    """As the reference; ``out=scores`` works in place. scale > 0: max(scale s) = scale max(s)."""
    xp = get_array_module(scores)
    e = xp.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)
    if scale != 1.0:
        e *= scale
    xp.exp(e, out=e)
    rsum = reduce_sum(e, -1, keepdims=True)                      # (..., 1)
    xp.reciprocal(rsum, out=rsum)
    e *= rsum                                                    # a multiply: cheaper than a divide
    return e


def softmax_backward(datt, att, scale=1.0, out=None):
    """As the reference; ``out=datt`` works in place."""
    xp = get_array_module(datt)
    dots = xp.einsum("...ij,...ij->...i", datt, att)[..., None]  # row dot products, no temporary of datt's size
    d = xp.subtract(datt, dots, out=out)
    d *= att
    if scale != 1.0:
        d *= scale
    return d


# -- im2col / col2im ---------------------------------------------------------------------------------
def _tiles(x_shape, kh, kw, stride, padding):
    return kh == kw == stride and padding == 0 and x_shape[2] % kh == 0 and x_shape[3] % kw == 0


def im2col(x, kh, kw, stride=1, padding=0):
    """Every window as a strided view of the (zero-padded) image, no copy: (B, OH, OW, C, kh, kw), which
    the GEMM's reshape gathers in one pass (the reference copies each of the kh*kw offsets, then transposes).
    When the windows tile the image (kernel = stride, no padding: the article's patch embedding) the view
    is a reshape/transpose of x itself."""
    B, C, H, W = x.shape
    if _tiles(x.shape, kh, kw, stride, padding):
        p = kh
        return x.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)   # (B, H/p, W/p, C, p, p)
    xp = get_array_module(x)
    OH = reference.conv_output_size(H, kh, stride, padding)
    OW = reference.conv_output_size(W, kw, stride, padding)
    if padding:
        padded = xp.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=x.dtype)
        padded[:, :, padding:padding + H, padding:padding + W] = x
        x = padded                                               # (B, C, H + 2p, W + 2p)
    sB, sC, sH, sW = x.strides
    return xp.lib.stride_tricks.as_strided(x, (B, OH, OW, C, kh, kw),
                                           (sB, sH * stride, sW * stride, sC, sH, sW))  # (B, OH, OW, C, kh, kw)


def col2im(cols, x_shape, stride=1, padding=0):
    """The inverse of the tiling reshape when windows tile the image, else the reference's scatter-add."""
    kh, kw = cols.shape[4:]
    if not _tiles(x_shape, kh, kw, stride, padding):
        return reference.col2im(cols, x_shape, stride, padding)
    return cols.transpose(0, 3, 1, 4, 2, 5).reshape(x_shape)


FAST = KernelSet("fast", backends=("numpy", "cupy"), primitives={
    **own(reduce_sum, layernorm_forward, layernorm_backward, gelu_forward, gelu_backward, softmax_forward,
          softmax_backward, im2col, col2im),
    **taken(reference.REFERENCE, "matmul", "log_softmax", "cross_entropy_forward", "cross_entropy_backward",
            "adamw_update", "sgd_update"),                        # the GEMM is BLAS's (cuBLAS's)
})
