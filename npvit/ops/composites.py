"""The composites, written once over a kernel set's primitives: Linear, the convolution, the attention core.

Each takes the set first (``ops``) and calls only its primitives for the math, so a set that
brings its own GEMM (``ops.matmul``) or sums (``ops.reduce_sum``) runs it everywhere, and the
glue between the GEMMs is the same code on every set. A set binds these to itself
(``ops.attention_forward(qkv, scale)``, npvit/ops/contract.py); it replaces one only with a
genuinely fused kernel, tested equal to the one here.

Shapes: B batch, N tokens, Nq tokens that ask (queries), H heads, hs head size, M rows.
"""
from __future__ import annotations

from ..backend import get_array_module
from .contract import AttentionCache, Conv2dCache, LinearCache


# -- Linear: y = x W^T + b ------------------------------------------------------------------
def linear_forward(ops, x, w, b=None):
    """x (..., Din), w (Dout, Din), b (Dout,) or None -> (y (..., Dout), LinearCache)."""
    x2d = x.reshape(-1, x.shape[-1])                             # (M, Din)
    y = ops.matmul(x2d, w, transpose_b=True)                     # (M, Dout): one GEMM
    if b is not None:
        y += b                                                   # in place: y is this function's own
    return y.reshape(*x.shape[:-1], w.shape[0]), LinearCache(x2d, b is not None)


def linear_backward(ops, dy, cache, w):
    """y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum over rows of dy (None without a bias)."""
    x2d = cache.x2d                                              # (M, Din)
    dy2d = dy.reshape(-1, dy.shape[-1])                          # (M, Dout)
    dw = ops.matmul(dy2d, x2d, transpose_a=True)                 # (Dout, Din)
    db = ops.reduce_sum(dy2d, 0) if cache.has_bias else None     # (Dout,)
    dx = ops.matmul(dy2d, w)                                     # (M, Din)
    return dx.reshape(*dy.shape[:-1], w.shape[1]), dw, db


# -- Conv2d as im2col + one GEMM ------------------------------------------------------------------
def conv2d_forward(ops, x, w, b=None, stride=1, padding=0):
    """x (B, C, H, W), w (D, C, kh, kw), b (D,) or None -> (y (B, D, OH, OW), Conv2dCache), as torch's Conv2d.

        cols = im2col(x)            (B*OH*OW, C*kh*kw): every receptive field, one per row
        y    = cols W^T + b         (B*OH*OW, D), then (B, D, OH, OW)
    """
    D, C, kh, kw = w.shape
    cols = ops.im2col(x, kh, kw, stride, padding)               # (B, OH, OW, C, kh, kw)
    B, OH, OW = cols.shape[:3]
    cols = cols.reshape(B * OH * OW, C * kh * kw)                # (B*OH*OW, C*kh*kw): the one copy
    y = ops.matmul(cols, w.reshape(D, C * kh * kw), transpose_b=True)   # (B*OH*OW, D)
    if b is not None:
        y += b
    y = y.reshape(B, OH, OW, D).transpose(0, 3, 1, 2)            # (B, D, OH, OW), a view
    return y, Conv2dCache(cols, x.shape, stride, padding, b is not None)


def conv2d_backward(ops, dy, cache, w, input_grad=True):
    """y = cols W^T + b  =>  dW = dy^T cols,  db = sum over rows of dy,  dcols = dy W,  dx = col2im(dcols).
    ``input_grad`` False: no dx (None), for an input that needs no gradient (the images, in training)."""
    B, D, OH, OW = dy.shape
    _, C, kh, kw = w.shape
    dy2d = dy.transpose(0, 2, 3, 1).reshape(B * OH * OW, D)     # (B*OH*OW, D)
    dw = ops.matmul(dy2d, cache.cols, transpose_a=True).reshape(w.shape)   # (D, C, kh, kw)
    db = ops.reduce_sum(dy2d, 0) if cache.has_bias else None    # (D,)
    if not input_grad:
        return None, dw, db
    dcols = ops.matmul(dy2d, w.reshape(D, C * kh * kw))          # (B*OH*OW, C*kh*kw)
    dcols = dcols.reshape(B, OH, OW, C, kh, kw)
    return ops.col2im(dcols, cache.x_shape, cache.stride, cache.padding), dw, db


# -- the attention core: scores, softmax, context ------------------------------------------------
def attention_forward(ops, qkv, scale, num_queries=None, mask=None):
    """qkv (3, B, H, N, hs): every head's queries, keys and values -> (ctx (B, H, Nq, hs), AttentionCache).

        scores = q k^T              (B, H, Nq, N)
        att    = softmax(scale * scores),  scale = 1 / sqrt(hs); rows sum to 1
        att_d  = att * mask         (attention dropout; mask None: att_d = att)
        ctx    = att_d v            (B, H, Nq, hs)

    Only the first ``num_queries`` tokens ask (the [CLS]-only last block uses 1); every token answers.
    """
    Nq = qkv.shape[3] if num_queries is None else num_queries
    q, k, v = qkv[0, :, :, :Nq], qkv[1], qkv[2]                  # (B, H, Nq, hs), (B, H, N, hs) x 2
    scores = ops.matmul(q, k, transpose_b=True)                  # (B, H, Nq, N)
    att = ops.softmax_forward(scores, scale, out=scores)         # in place: the scores are not needed again
    att_d = att if mask is None else att * mask
    ctx = ops.matmul(att_d, v)                                   # (B, H, Nq, hs)
    return ctx, AttentionCache(qkv, att, att_d, mask, scale, Nq)


def attention_backward(ops, dctx, cache):
    """dctx (B, H, Nq, hs) -> dqkv (3, B, H, N, hs), the forward reversed:

        ctx = att_d v            =>  datt_d = dctx v^T,  dv = att_d^T dctx
        att_d = att * mask       =>  datt = datt_d * mask
        att = softmax(scale s)   =>  dscores = scale * att * (datt - sum(datt * att))
        s = q k^T                =>  dq = dscores k,  dk = dscores^T q
    Tokens that asked nothing (beyond Nq) get no query gradient.
    """
    xp = get_array_module(dctx)
    qkv, att, att_d, mask, scale, Nq = cache
    q, k, v = qkv[0, :, :, :Nq], qkv[1], qkv[2]
    dctx = xp.ascontiguousarray(dctx)
    dqkv = xp.empty_like(qkv)                                    # (3, B, H, N, hs), written part by part
    if Nq < qkv.shape[3]:
        dqkv[0, :, :, Nq:] = 0                                   # tokens that asked nothing
    datt = ops.matmul(dctx, v, transpose_b=True)                 # (B, H, Nq, N)
    ops.matmul(att_d, dctx, transpose_a=True, out=dqkv[2])       # dv = att_d^T dctx
    if mask is not None:
        datt *= mask
    dscores = ops.softmax_backward(datt, att, scale, out=datt)   # in place
    ops.matmul(dscores, k, out=dqkv[0, :, :, :Nq])               # dq = dscores k
    ops.matmul(dscores, q, transpose_a=True, out=dqkv[1])        # dk = dscores^T q
    return dqkv
