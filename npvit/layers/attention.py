"""Multi-head self-attention (Vaswani et al. 2017), as the article's FasterMultiHeadAttention.

One fused QKV projection, then all heads at once as batched matmuls over
(B, H): no Python loop over heads. The QKV weight's rows are all heads' Q,
then all heads' K, then all heads' V, matching ``torch.chunk(qkv, 3, dim=-1)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .base import Layer
from .dropout import Dropout
from .linear import Linear


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
        mask = self.attn_dropout.draw_mask((B, H, Nq, N), qkv.dtype, xp)
        # scores = q k^T, att = softmax(scores / sqrt(hs)), ctx = dropout(att) v  (npvit/ops/composites.py)
        ctx, self.cache = self.kernels.attention_forward(qkv, self.scale, Nq, mask)   # (B, H, Nq, hs)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, Nq, D)        # (B, Nq, D): heads concatenated
        return self.output_dropout.forward(self.output_projection.forward(ctx))

    @property
    def att(self):
        """The attention probabilities of the last forward, (B, H, Nq, N): each row sums to 1."""
        return self.cache.att

    def backward(self, dy):
        B, Nq, D = dy.shape
        N, H, hs = self.cache.qkv.shape[3], self.H, self.hs
        dctx = self.output_projection.backward(self.output_dropout.backward(dy))  # (B, Nq, D)
        dctx = dctx.reshape(B, Nq, H, hs).transpose(0, 2, 1, 3)  # (B, H, Nq, hs)
        # ctx = att_d v, att = softmax(q k^T / sqrt(hs)): dv, datt, dscores, then dq and dk
        dqkv = self.kernels.attention_backward(dctx, self.cache)  # (3, B, H, N, hs)
        dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(B, N, 3 * D)  # (B, N, 3D), undoing the head split
        return self.qkv_projection.backward(dqkv)
