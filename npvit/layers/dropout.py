"""Inverted dropout (Srivastava et al. 2014): scale kept units by 1/(1-p) at train time; and its
per-sample form, DropPath (stochastic depth, Huang et al. 2016), which keeps or drops a whole
residual branch for each image.

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

    def draw_mask(self, shape, dtype, xp):
        """The next mask keep / (1 - p) of ``shape`` in ``dtype`` (float32 stays float32), or None in eval
        mode or when p == 0 (for layers that apply it inside their own math, as attention does)."""
        if not self.training or self.p == 0.0:
            return None
        if self.rng is None:
            self.rng = default_rng(xp, self.seed)
        mask = (self.rng.random(shape, dtype=dtype) >= self.p).astype(dtype)
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
