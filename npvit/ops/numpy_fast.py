"""The reference math (npvit/ops/reference.py), rewritten for speed on NumPy's one-core elementwise work.

The same signatures and the same results (tested: float64 to 1e-12, float32 to 1e-5); what changes
is how many passes over memory each takes. The tricks:
- sums over short rows (65 tokens, 48 features) as a BLAS matrix-vector product (``row_sum``),
  several times faster than NumPy's reduction over the last axis;
- in-place updates of temporaries the function itself made (a GEMM's output, a centred copy), instead
  of a new array per operator;
- the tanh GELU as x * sigmoid(2u): exp is cheaper than tanh, and 1 + tanh(u) loses digits to
  cancellation for negative u in float32;
- attention scales q (Nq x hs) rather than the scores (Nq x N), writes q, k, v gradients straight
  into one buffer, and takes the softmax backward's row dots with einsum (no (B, H, Nq, N) temporary);
- the patch embedding's im2col is a pure reshape when the windows tile the image.
Functions not redefined here are the reference's. A fused CuPy set would sit beside this one.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .reference import *  # noqa: F401,F403  (what is not faster here is the reference)
from .reference import GELU_COEF, SQRT_2_OVER_PI, col2im as _col2im, im2col as _im2col
from .reference import gelu_backward as _gelu_backward, gelu_forward as _gelu_forward


def row_sum(x):
    """sum over the last axis, keepdims: (..., n) -> (..., 1), as the matrix-vector product x 1."""
    xp = get_array_module(x)
    return (x @ xp.ones(x.shape[-1], dtype=x.dtype))[..., None]


def row_mean(x):
    """mean over the last axis, keepdims: (..., n) -> (..., 1), through row_sum."""
    return row_sum(x) / x.shape[-1]


# -- Linear ------------------------------------------------------------------------------------
def linear_forward(x, w, b=None):
    x2d = x.reshape(-1, x.shape[-1])                             # (M, Din)
    y = x2d @ w.T                                                # (M, Dout): one GEMM, W^T is a view
    if b is not None:
        y += b                                                   # in place: y is this function's own
    return y.reshape(*x.shape[:-1], w.shape[0]), x2d


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
    return y, (xhat, rstd)


def layernorm_backward(dy, cache, w):
    # the reference's dvar/dmean form, collected: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
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


# -- GELU -----------------------------------------------------------------------------------------
def gelu_forward(x, approximate="tanh"):
    if approximate != "tanh":
        return _gelu_forward(x, approximate)
    xp = get_array_module(x)
    # y = x s,  s = 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)),  u = x (a + b x^2);
    # in one buffer, constants folded; x*x, never x**3 (float32 power is slow).
    s = x * x
    s *= -2.0 * SQRT_2_OVER_PI * GELU_COEF                       # -2 b x^2
    s -= 2.0 * SQRT_2_OVER_PI                                    # -2 (a + b x^2)
    s *= x                                                       # -2u
    with np.errstate(over="ignore"):                             # exp(-2u) = inf for x < -10: s = 0, y = -0, exact
        xp.exp(s, out=s)
    s += 1.0
    xp.reciprocal(s, out=s)                                      # s = sigmoid(2u)
    return x * s, (x, s)


def gelu_backward(dy, cache, approximate="tanh"):
    if approximate != "tanh":
        return _gelu_backward(dy, cache, approximate)
    # y = x s,  s = sigmoid(2u),  ds/du = 2 s (1 - s):  dy/dx = s + x s (1 - s) 2 du/dx,  du/dx = a + 3 b x^2
    x, s = cache
    dudx2 = x * x                                                # 2 du/dx, in place
    dudx2 *= 6.0 * SQRT_2_OVER_PI * GELU_COEF
    dudx2 += 2.0 * SQRT_2_OVER_PI
    g = 1.0 - s
    g *= s
    g *= x
    g *= dudx2
    g += s
    g *= dy
    return g


# -- softmax ------------------------------------------------------------------------------------
def softmax_forward(scores, out=None):
    """As the reference; ``out=scores`` works in place."""
    xp = get_array_module(scores)
    e = xp.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)
    xp.exp(e, out=e)
    rsum = row_sum(e)                                            # (..., 1)
    xp.reciprocal(rsum, out=rsum)
    e *= rsum                                                    # a multiply: cheaper than a divide
    return e


def softmax_backward(datt, att, out=None):
    """As the reference; ``out=datt`` works in place."""
    xp = get_array_module(datt)
    dots = xp.einsum("...ij,...ij->...i", datt, att)[..., None]  # row dot products, no temporary of datt's size
    d = xp.subtract(datt, dots, out=out)
    d *= att
    return d


# -- the attention core -------------------------------------------------------------------------------
def attention_forward(qkv, scale, num_queries=None, mask=None):
    Nq = qkv.shape[3] if num_queries is None else num_queries
    q, k, v = qkv[0, :, :, :Nq], qkv[1], qkv[2]
    qs = q * scale                           # q' = q / sqrt(hs): scaling q is hs/N the work of scaling the scores
    scores = qs @ k.transpose(0, 1, 3, 2)                        # (B, H, Nq, N) = q k^T / sqrt(hs)
    att = softmax_forward(scores, out=scores)
    att_d = att if mask is None else att * mask
    ctx = att_d @ v                                              # (B, H, Nq, hs)
    return ctx, (qkv, qs, Nq, scale, att, att_d, mask)


def attention_backward(dctx, cache):
    xp = get_array_module(dctx)
    qkv, qs, Nq, scale, att, att_d, mask = cache
    k, v = qkv[1], qkv[2]
    dctx = xp.ascontiguousarray(dctx)
    dqkv = xp.empty_like(qkv)                                    # (3, B, H, N, hs), written in place below
    dq = dqkv[0, :, :, :Nq]
    dqkv[0, :, :, Nq:] = 0                                       # tokens that asked nothing: no query gradient
    datt = dctx @ v.transpose(0, 1, 3, 2)                        # (B, H, Nq, N)
    xp.matmul(att_d.transpose(0, 1, 3, 2), dctx, out=dqkv[2])   # dv = att_d^T dctx
    if mask is not None:
        datt *= mask
    dscores = softmax_backward(datt, att, out=datt)
    xp.matmul(dscores, k, out=dq)                                # dq = dscores k * scale
    dq *= scale
    xp.matmul(dscores.transpose(0, 1, 3, 2), qs, out=dqkv[1])   # dk = dscores^T q' (q' already scaled)
    return dqkv


# -- im2col / col2im ---------------------------------------------------------------------------------
def _tiles(x_shape, kh, kw, stride, padding):
    return kh == kw == stride and padding == 0 and x_shape[2] % kh == 0 and x_shape[3] % kw == 0


def im2col(x, kh, kw, stride=1, padding=0):
    """When the windows tile the image (kernel = stride, no padding: the patch embedding) a pure
    reshape/transpose; otherwise the reference's gather."""
    if not _tiles(x.shape, kh, kw, stride, padding):
        return _im2col(x, kh, kw, stride, padding)
    B, C, H, W = x.shape
    p = kh
    return x.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)   # (B, H/p, W/p, C, p, p)


def col2im(cols, x_shape, stride=1, padding=0):
    """The inverse of the tiling reshape when windows tile the image, else the reference's scatter-add."""
    kh, kw = cols.shape[4:]
    if not _tiles(x_shape, kh, kw, stride, padding):
        return _col2im(cols, x_shape, stride, padding)
    return cols.transpose(0, 3, 1, 4, 2, 5).reshape(x_shape)
