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
    """x (B, N, D) -> y (B, Nq, D). H heads of size hs = D / H.

    scores = q k^T / sqrt(hs); att = softmax(scores); y = (att v) Wo^T + bo.
    Every token asks (Nq = N) unless ``num_queries=Nq``: then only the first Nq tokens
    ask, and all N still answer (keys and values).
    """

    def __init__(self, hidden_size, num_heads, qkv_bias=True, attn_dropout=0.0, proj_dropout=0.0,
                 rng=None, std=0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.D, self.H, self.hs = hidden_size, num_heads, hidden_size // num_heads
        self.scale = 1.0 / math.sqrt(self.hs)
        self.qkv_projection = Linear(hidden_size, 3 * hidden_size, bias=qkv_bias, rng=rng, std=std)
        self.attn_dropout = Dropout(attn_dropout)
        self.output_projection = Linear(hidden_size, hidden_size, rng=rng, std=std)
        self.output_dropout = Dropout(proj_dropout)

    def forward(self, x, num_queries=None):
        """x (B, N, D) -> y (B, Nq, D); the attention probabilities stay in ``self.att`` (B, H, Nq, N)."""
        if x.ndim != 3 or x.shape[-1] != self.D:
            raise ValueError(f"attention expects input (B, N, {self.D}), got shape {x.shape}")
        xp = get_array_module(x)
        B, N, D = x.shape
        H, hs = self.H, self.hs
        Nq = N if num_queries is None else num_queries
        if not 0 < Nq <= N:
            raise ValueError(f"num_queries must be in 1..{N} (the number of tokens), got {num_queries}")
        qkv = self.qkv_projection.forward(x)                     # (B, N, 3D)
        # One copy into head-major order, so q, k, v are contiguous for BLAS.
        qkv = xp.ascontiguousarray(qkv.reshape(B, N, 3, H, hs).transpose(2, 0, 3, 1, 4))  # (3, B, H, N, hs)
        q, k, v = qkv[0, :, :, :Nq], qkv[1], qkv[2]              # q (B, H, Nq, hs); k, v (B, H, N, hs)
        q *= self.scale              # q' = q / sqrt(hs): scaling q is 12/65 the work of scaling the scores
        scores = q @ k.transpose(0, 1, 3, 2)                     # (B, H, Nq, N) = q k^T / sqrt(hs)
        att = softmax(scores, out=scores)                        # (B, H, Nq, N), rows sum to 1
        att_d = self.attn_dropout.forward(att)
        ctx = att_d @ v                                          # (B, H, Nq, hs)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, Nq, D)        # (B, Nq, D): heads concatenated
        y = self.output_dropout.forward(self.output_projection.forward(ctx))
        self.qkv, self.att, self.att_d = qkv, att, att_d
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        B, Nq, D = dy.shape
        N, H, hs = self.qkv.shape[3], self.H, self.hs
        q, k, v = self.qkv[0, :, :, :Nq], self.qkv[1], self.qkv[2]
        att, att_d = self.att, self.att_d
        dctx = self.output_projection.backward(self.output_dropout.backward(dy))  # (B, Nq, D)
        dctx = xp.ascontiguousarray(dctx.reshape(B, Nq, H, hs).transpose(0, 2, 1, 3))  # (B, H, Nq, hs)
        dqkv = xp.empty_like(self.qkv)                           # (3, B, H, N, hs)
        dq = dqkv[0, :, :, :Nq]
        dqkv[0, :, :, Nq:] = 0                                   # tokens that asked nothing: no query gradient
        # ctx = att_d v  =>  datt_d = dctx v^T,  dv = att_d^T dctx
        datt = dctx @ v.transpose(0, 1, 3, 2)                    # (B, H, Nq, N)
        xp.matmul(att_d.transpose(0, 1, 3, 2), dctx, out=dqkv[2])
        datt = self.attn_dropout.backward(datt)
        # att = softmax(scores)  =>  dscores = att * (datt - sum(datt * att, -1))
        datt -= xp.einsum("bhij,bhij->bhi", datt, att)[..., None]   # row dot products, no (B,H,N,N) temporary
        datt *= att
        dscores = datt
        # scores = q' k^T with q' = q * scale  =>  dq = (dscores k) * scale,  dk = dscores^T q'
        xp.matmul(dscores, k, out=dq)
        dq *= self.scale
        xp.matmul(dscores.transpose(0, 1, 3, 2), q, out=dqkv[1])
        dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * D)  # (B, N, 3D), undoing the head split
        return self.qkv_projection.backward(dqkv)
