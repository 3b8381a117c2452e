"""The numba kernel set: the reference's elementwise and row-wise primitives as fused CPU loops
compiled by Numba, for the numpy backend.

numpy_fast makes NumPy take fewer passes over memory, but each NumPy operator is still a pass of its
own, and NumPy's float32 ``exp`` is a scalar loop on many machines. After the GEMMs, that elementwise
work is most of a CPU training step (benchmarks/README.md has the profile). Here each chain is one
loop that LLVM vectorises:

- ``exp`` in float32 is written out (``_exp``), so that a loop calling it vectorises without a vector
  math library: exp(z) = 2^n exp(r) with n = round(z / ln 2), |r| <= ln(2) / 2, and exp(r) by its
  Taylor series to r^6; 2^n is built from its bits. Its error is bounded in ulp by
  tests/ops/test_numba.py; float64 (the gradient checks) uses libm's exp;
- GELU (tanh) forward and backward: one loop each, the x * sigmoid(2u) form of numpy_fast;
- softmax with its scale, forward and backward: row by row, in place;
- LayerNorm forward and backward: row by row; the backward adds dw and db in the same pass.

The same signatures and the same results (tested against the reference: float64 to 1e-12, float32
to 1e-5). The table at the end says what is taken from the reference (the GEMMs are BLAS's) and from
numpy_fast. Every loop releases the GIL, so DataParallel's shard threads run them side by side.
Compiled on first use (a few seconds, cached on disk). Importing this module needs Numba; npvit.ops
loads it only when a model asks for ``kernels="numba"`` (or ``"auto"`` finds Numba installed).
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from . import numpy_fast, reference
from .contract import GeluCache, LayerNormCache
from .kernelset import KernelSet, own, taken
from .reference import GELU_COEF, SQRT_2_OVER_PI

# Vectorising a sum needs reassociation, a*b+c may become one FMA, and exp may be approximated; but
# NaN and inf keep their meaning (no "nnan"/"ninf"), so a diverging run still shows NaN in its loss.
# error_model "numpy": x / 0 is inf, as in NumPy, not a Python exception (whose check blocks SIMD).
JIT = dict(nogil=True, cache=True, error_model="numpy",
           fastmath={"reassoc", "contract", "arcp", "nsz", "afn"})
# Constants come into the loops as arguments of the arrays' dtype (zero, one, ...): a Python literal
# would make Numba compute a float32 loop in float64.


# -- exp --------------------------------------------------------------------------------------------
@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits`` (a reinterpretation, no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


LOG2_E = 1.4426950408889634
LN2_HI = 0.693359375            # ln 2 = LN2_HI + LN2_LO, LN2_HI with 9 significant bits: n * LN2_HI is exact
LN2_LO = -2.1219444005469057e-4


def _exp(z):
    """exp(z) inside the kernels below (compiled by the overload that follows)."""
    return math.exp(z)


@overload(_exp, jit_options=JIT)
def _exp_by_type(z):
    if z != types.float32:
        return lambda z: math.exp(z)

    def exp_float32(z):
        # keep 2^n a normal float32: exp(-87) = 1.6e-38 stands in for anything smaller (in a softmax or a
        # sigmoid, next to 1, it is 0), exp(88) = 1.7e38 for anything larger
        z = min(max(z, np.float32(-87.0)), np.float32(88.0))
        n = np.floor(z * np.float32(LOG2_E) + np.float32(0.5))               # z = n ln2 + r
        r = (z - n * np.float32(LN2_HI)) - n * np.float32(LN2_LO)            # |r| <= ln(2) / 2
        p = np.float32(1.0) + r * (np.float32(1.0) + r * (np.float32(1 / 2) + r * (np.float32(1 / 6) + r * (
            np.float32(1 / 24) + r * (np.float32(1 / 120) + r * np.float32(1 / 720))))))   # exp(r)
        two_n = _float32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))  # 2^n: exponent bits
        return p * two_n
    return exp_float32


# -- GELU (tanh) ----------------------------------------------------------------------------------
# y = x s,  s = sigmoid(2u) = 0.5 (1 + tanh(u)),  u = a (x + c x^3),  a = sqrt(2/pi), c = 0.044715
@njit(**JIT)
def _gelu_tanh_forward(x, y, s, one, a, c):
    for i in range(x.size):
        xi = x[i]
        si = one / (one + _exp(-(a + a) * xi * (one + c * xi * xi)))    # sigmoid(2u) = 1 / (1 + exp(-2u))
        s[i] = si
        y[i] = xi * si


# dy/dx = s + x s (1 - s) 2 du/dx,  2 du/dx = 2a (1 + 3c x^2)
@njit(**JIT)
def _gelu_tanh_backward(dy, x, s, dx, one, a, c):
    for i in range(x.size):
        xi, si = x[i], s[i]
        dx[i] = dy[i] * (si + xi * si * (one - si) * (a + a) * (one + (c + c + c) * xi * xi))


def _flat(a):
    """a as a contiguous 1-D view (a copy only if it is not C-contiguous)."""
    return np.ascontiguousarray(a).reshape(-1)


def gelu_forward(x, approximate="tanh"):
    if approximate != "tanh":
        return reference.gelu_forward(x, approximate)
    T = x.dtype.type
    y, s = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype)     # C order, so reshape(-1) is a view
    _gelu_tanh_forward(_flat(x), y.reshape(-1), s.reshape(-1), T(1), T(SQRT_2_OVER_PI), T(GELU_COEF))
    return y, GeluCache(x, s, approximate)


def gelu_backward(dy, cache):
    if cache.approximate != "tanh":
        return reference.gelu_backward(dy, cache)
    x, s, _ = cache
    T = x.dtype.type
    dx = np.empty(x.shape, x.dtype)
    _gelu_tanh_backward(_flat(dy), _flat(x), _flat(s), dx.reshape(-1), T(1), T(SQRT_2_OVER_PI), T(GELU_COEF))
    return dx


# -- LayerNorm: row by row over (M, D) -----------------------------------------------------------------
@njit(**JIT)
def _layernorm_forward(x, w, b, y, xhat, rstd, eps, inv_D, zero, one):
    M, D = x.shape
    for m in range(M):
        mean = zero
        for i in range(D):
            mean += x[m, i]
        mean *= inv_D
        var = zero
        for i in range(D):
            xc = x[m, i] - mean
            xhat[m, i] = xc
            var += xc * xc
        r = one / np.sqrt(var * inv_D + eps)                   # biased variance, as torch
        rstd[m, 0] = r
        for i in range(D):
            xh = xhat[m, i] * r
            xhat[m, i] = xh
            y[m, i] = xh * w[i] + b[i]


# dxhat = dy w;  dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat));  dw += dy xhat;  db += dy
@njit(**JIT)
def _layernorm_backward(dy, xhat, rstd, w, dx, dw, db, inv_D, zero):
    M, D = dy.shape
    for m in range(M):
        mean_dxhat = zero
        mean_dxhat_xhat = zero
        for i in range(D):
            g, xh = dy[m, i], xhat[m, i]
            dxh = g * w[i]
            mean_dxhat += dxh
            mean_dxhat_xhat += dxh * xh
            dw[i] += g * xh
            db[i] += g
        mean_dxhat *= inv_D
        mean_dxhat_xhat *= inv_D
        r = rstd[m, 0]
        for i in range(D):
            dx[m, i] = r * (dy[m, i] * w[i] - mean_dxhat - xhat[m, i] * mean_dxhat_xhat)


def layernorm_forward(x, w, b, eps=1e-5):
    D = x.shape[-1]
    T = x.dtype.type
    x2d = np.ascontiguousarray(x).reshape(-1, D)                 # (M, D)
    y, xhat = np.empty_like(x2d), np.empty_like(x2d)
    rstd = np.empty((x2d.shape[0], 1), dtype=x.dtype)            # (M, 1)
    _layernorm_forward(x2d, w, b, y, xhat, rstd, T(eps), T(1 / D), T(0), T(1))
    lead = x.shape[:-1]
    return y.reshape(x.shape), LayerNormCache(xhat.reshape(x.shape), rstd.reshape(*lead, 1))


def layernorm_backward(dy, cache, w):
    xhat, rstd = cache
    D = xhat.shape[-1]
    T = xhat.dtype.type
    dy2d = np.ascontiguousarray(dy).reshape(-1, D)               # (M, D)
    dx = np.empty_like(dy2d)
    dw, db = np.zeros(D, dtype=xhat.dtype), np.zeros(D, dtype=xhat.dtype)
    _layernorm_backward(dy2d, xhat.reshape(-1, D), rstd.reshape(-1, 1), w, dx, dw, db, T(1 / D), T(0))
    return dx.reshape(dy.shape), dw, db


# -- softmax with a scale, row by row over (R, n), in place ----------------------------------------------
# In place on purpose: LLVM vectorises a loop only after checking at run time that its input and output
# do not overlap, and an output that IS its input fails that check (the loop then runs scalar, several times slower).
#
# att = exp(scale (s - max)) / sum(exp(scale (s - max))): softmax(scale * s), for scale > 0, in three passes.
# Each row's max, subtracted and scaled, row by row; then exp over the whole block as one flat loop: a row of 65
# leaves one element after eight 8-wide vectors, and a scalar exp per row costs about as much as the
# vectorised rest of it (docs/experiments.md has the times); then each row over its sum.
@njit(**JIT)
def _softmax_forward_inplace(s, scale, zero, one):
    R, n = s.shape
    for r in range(R):
        top = s[r, 0]
        for j in range(1, n):
            top = max(top, s[r, j])
        for j in range(n):
            s[r, j] = scale * (s[r, j] - top)
    z = s.reshape(-1)                                          # (R n,): s is C-contiguous
    for i in range(z.size):
        z[i] = _exp(z[i])
    for r in range(R):
        total = zero
        for j in range(n):
            total += s[r, j]
        inv_total = one / total
        for j in range(n):
            s[r, j] *= inv_total


# dscores = scale att (datt - sum(datt att)): the Jacobian of softmax(scale * s) applied per row
@njit(**JIT)
def _softmax_backward_inplace(d, att, scale, zero):
    R, n = d.shape
    for r in range(R):
        dot = zero
        for j in range(n):
            dot += d[r, j] * att[r, j]
        for j in range(n):
            d[r, j] = scale * att[r, j] * (d[r, j] - dot)


def _into(a, out):
    """``a`` copied into ``out`` (a new array if None; nothing to copy if ``out`` is ``a``), C-contiguous."""
    if out is None:
        return np.array(a, order="C")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if out is not a:
        out[...] = a
    return out


def softmax_forward(scores, scale=1.0, out=None):
    """softmax(scale * scores) over the last axis, scale > 0; ``out=scores`` works in place."""
    att = _into(scores, out)
    T = att.dtype.type
    _softmax_forward_inplace(att.reshape(-1, att.shape[-1]), T(scale), T(0), T(1))
    return att


def softmax_backward(datt, att, scale=1.0, out=None):
    """scale * att (datt - sum(datt att)); ``out=datt`` works in place."""
    d = _into(datt, out)
    T = d.dtype.type
    n = d.shape[-1]
    _softmax_backward_inplace(d.reshape(-1, n), np.ascontiguousarray(att).reshape(-1, n), T(scale), T(0))
    return d


NUMBA = KernelSet("numba", backends=("numpy",), primitives={
    **own(layernorm_forward, layernorm_backward, gelu_forward, gelu_backward, softmax_forward, softmax_backward),
    **taken(reference.REFERENCE, "matmul", "log_softmax", "cross_entropy_forward", "cross_entropy_backward",
            "adamw_update", "sgd_update"),                           # the GEMM is BLAS's
    **taken(numpy_fast.FAST, "reduce_sum", "im2col", "col2im"),      # sums as BLAS gemv; im2col a reshape
})
