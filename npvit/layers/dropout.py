"""Inverted dropout (Srivastava et al. 2014): scale kept units by 1/(1-p) at train time; its
per-sample form, DropPath (stochastic depth, Huang et al. 2016), which keeps or drops a whole
residual branch for each image; and PatchDropout (Liu et al. 2023), which trains each image on a
random share of its patch tokens.

Its random stream is set by the tree that owns it (``Layer.reseed``): one owner for all
of a model's dropout randomness."""
from __future__ import annotations

import math

from ..backend import default_rng, get_array_module
from .base import Layer


class Dropout(Layer):
    """x (...) -> y (...). Identity in eval mode or when p == 0."""

    def __init__(self, p=0.0):
        super().__init__()
        if not (isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p < 1.0):
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = 0      # set by reseed()
        self.rng = None    # made from seed on the input's device at the next forward
        self.device_random = None   # a CounterGenerator when the model draws on the device (ViT.draw_on_device)

    def generator(self, xp):
        """This layer's random stream on ``xp``'s device (made from ``seed`` at first use): xp's Generator, or
        the device counter's stream ``seed`` started again (npvit/ops/cuda_random.py)."""
        if self.rng is None:
            self.rng = default_rng(xp, self.seed) if self.device_random is None else self.device_random.reset(self.seed)
        return self.rng

    def draw_mask(self, shape, dtype, xp):
        """The next mask keep / (1 - p) of ``shape`` in ``dtype`` (float32 stays float32), or None in eval
        mode or when p == 0 (for layers that apply it inside their own math, as attention does)."""
        if not self.training or self.p == 0.0:
            return None
        mask = (self.generator(xp).random(shape, dtype=dtype) >= self.p).astype(dtype)
        mask *= 1.0 / (1.0 - self.p)
        return mask

    def forward(self, x):
        self.mask = self.draw_mask(x.shape, x.dtype, get_array_module(x))
        return x if self.mask is None else x * self.mask

    def backward(self, dy):
        # y = x * mask  =>  dx = dy * mask
        return dy if self.mask is None else dy * self.mask


class DropPath(Dropout):
    """Stochastic depth: x (B, ...) -> y (B, ...), each sample's branch kept (scaled by 1/(1-p)) or
    zeroed whole, one draw per sample. In a residual block, x + DropPath(f(x)) skips f for the
    dropped images. Identity in eval mode or when p == 0 (timm's DropPath)."""

    def forward(self, x):
        xp = get_array_module(x)
        self.mask = self.draw_mask((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype, xp)    # (B, 1, ..., 1)
        return x if self.mask is None else x * self.mask

    # backward is Dropout's: y = x * mask  =>  dx = dy * mask (the mask broadcast over each sample)


class PatchDropout(Dropout):
    """x (B, N, D), token 0 the [CLS] token -> (B, 1 + K, D): in training, each image keeps its [CLS] token
    and K = round((1 - p) (N - 1)) of its patch tokens, a random choice per image (their positions are
    already in them); the rest of the model runs on fewer tokens, so a step costs less. Identity in eval
    mode or when p == 0 (timm's PatchDropout, num_prefix_tokens=1)."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.rows = None
            return x
        xp = get_array_module(x)
        B, N, _ = x.shape
        K = max(1, round((1.0 - self.p) * (N - 1)))
        u = self.generator(xp).random((B, N - 1))                # (B, N - 1) a number per patch
        first = self.rng.smallest_k(u, K) if self.device_random is not None else xp.argsort(u, axis=1)[:, :K]
        kept = first + 1                                         # (B, K) the patches of the K smallest numbers
        self.rows = (xp.arange(B)[:, None], xp.concatenate([xp.zeros((B, 1), kept.dtype), kept], axis=1))
        self.x_shape = x.shape
        return x[self.rows]                                      # (B, 1 + K, D): [CLS] and the kept patches

    def backward(self, dy):
        # y = x[b, kept_b]  =>  dx[b, kept_b] = dy, and 0 for the tokens dropped (each kept token once)
        if self.rows is None:
            return dy
        dx = get_array_module(dy).zeros(self.x_shape, dtype=dy.dtype)
        dx[self.rows] = dy
        return dx
