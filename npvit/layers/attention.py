"""Multi-head self-attention (Vaswani et al. 2017), as the article's FasterMultiHeadAttention.

One fused QKV projection, then all heads at once as batched matmuls over
(B, H): no Python loop over heads. The QKV weight's rows are all heads' Q,
then all heads' K, then all heads' V, matching ``torch.chunk(qkv, 3, dim=-1)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .base import Layer, row_sum
from .dropout import Dropout
from .linear import Linear


def softmax(scores, out=None):
    """Numerically stable softmax over the last axis, in the input's dtype (``out=scores`` for in place)."""
    xp = get_array_module(scores)
    e = xp.subtract(scores, scores.max(axis=-1, keepdims=True), out=out)
    xp.exp(e, out=e)
    rsum = row_sum(e)                                            # (..., 1)
    xp.reciprocal(rsum, out=rsum)
    e *= rsum                                                    # a multiply: cheaper than a divide
    return e


class MultiHeadSelfAttention(Layer):
    """x (B, N, D) -> y (B, N, D). H heads of size hs = D / H.

    scores = q k^T / sqrt(hs); att = softmax(scores); y = (att v) Wo^T + bo.
    """

    def __init__(self, hidden_size, num_heads, qkv_bias=True, attn_dropout=0.0, proj_dropout=0.0,
                 rng=None, std=0.02, seed=0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.D, self.H, self.hs = hidden_size, num_heads, hidden_size // num_heads
        self.scale = 1.0 / math.sqrt(self.hs)
        self.qkv_projection = Linear(hidden_size, 3 * hidden_size, bias=qkv_bias, rng=rng, std=std)
        self.attn_dropout = Dropout(attn_dropout, seed=seed)
        self.output_projection = Linear(hidden_size, hidden_size, rng=rng, std=std)
        self.output_dropout = Dropout(proj_dropout, seed=seed + 1)

    def forward(self, x, return_attention=False):
        if x.ndim != 3 or x.shape[-1] != self.D:
            raise ValueError(f"attention expects input (B, N, {self.D}), got shape {x.shape}")
        xp = get_array_module(x)
        B, N, D = x.shape
        H, hs = self.H, self.hs
        qkv = self.qkv_projection.forward(x)                     # (B, N, 3D)
        # One copy into head-major order, so q, k, v are contiguous for BLAS.
        qkv = xp.ascontiguousarray(qkv.reshape(B, N, 3, H, hs).transpose(2, 0, 3, 1, 4))  # (3, B, H, N, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]                         # each (B, H, N, hs)
        q *= self.scale              # q' = q / sqrt(hs): scaling q is 12/65 the work of scaling the scores
        scores = q @ k.transpose(0, 1, 3, 2)                     # (B, H, N, N) = q k^T / sqrt(hs)
        att = softmax(scores, out=scores)                        # (B, H, N, N), rows sum to 1
        att_d = self.attn_dropout.forward(att)
        ctx = att_d @ v                                          # (B, H, N, hs)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, N, D)         # (B, N, D): heads concatenated
        y = self.output_dropout.forward(self.output_projection.forward(ctx))
        self.qkv, self.att, self.att_d = qkv, att, att_d
        return (y, att) if return_attention else y

    def backward(self, dy):
        xp = get_array_module(dy)
        B, N, D = dy.shape
        H, hs = self.H, self.hs
        q, k, v = self.qkv[0], self.qkv[1], self.qkv[2]
        att, att_d = self.att, self.att_d
        dctx = self.output_projection.backward(self.output_dropout.backward(dy))  # (B, N, D)
        dctx = xp.ascontiguousarray(dctx.reshape(B, N, H, hs).transpose(0, 2, 1, 3))  # (B, H, N, hs)
        dqkv = xp.empty_like(self.qkv)                           # (3, B, H, N, hs)
        # ctx = att_d v  =>  datt_d = dctx v^T,  dv = att_d^T dctx
        datt = dctx @ v.transpose(0, 1, 3, 2)                    # (B, H, N, N)
        xp.matmul(att_d.transpose(0, 1, 3, 2), dctx, out=dqkv[2])
        datt = self.attn_dropout.backward(datt)
        # att = softmax(scores)  =>  dscores = att * (datt - sum(datt * att, -1))
        datt -= xp.einsum("bhij,bhij->bhi", datt, att)[..., None]   # row dot products, no (B,H,N,N) temporary
        datt *= att
        dscores = datt
        # scores = q' k^T with q' = q * scale  =>  dq = (dscores k) * scale,  dk = dscores^T q'
        xp.matmul(dscores, k, out=dqkv[0])
        dqkv[0] *= self.scale
        xp.matmul(dscores.transpose(0, 1, 3, 2), q, out=dqkv[1])
        dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * D)  # (B, N, 3D), undoing the head split
        return self.qkv_projection.backward(dqkv)
