"""Layer normalisation over the last dimension (Ba, Kiros & Hinton 2016), as torch.nn.LayerNorm."""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .base import Layer, row_mean


class LayerNorm(Layer):
    """x (..., D) -> y (..., D); weight (D,) = 1 and bias (D,) = 0 at init; eps 1e-5 as PyTorch."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.add_param("weight", np.ones(dim))
        self.add_param("bias", np.zeros(dim))

    def forward(self, x):
        if x.shape[-1] != self.dim:
            raise ValueError(f"LayerNorm expects last dimension {self.dim}, got input of shape {x.shape}")
        xp = get_array_module(x)
        xhat = x - row_mean(x)                                  # centred; becomes xhat in place
        var = row_mean(xhat * xhat)                             # (..., 1) biased variance, as torch
        var += self.eps
        self.rstd = rstd = 1.0 / xp.sqrt(var)                   # (..., 1)
        xhat *= rstd                                            # (..., D)
        self.xhat = xhat
        y = xhat * self.params["weight"]
        y += self.params["bias"]
        return y

    def backward(self, dy):
        # y = xhat * w + b,  xhat = (x - mean) * rstd
        # dw = sum(dy * xhat), db = sum(dy), dxhat = dy * w
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        xp = get_array_module(dy)
        dy2d, xhat2d = dy.reshape(-1, self.dim), self.xhat.reshape(-1, self.dim)   # (M, D): every row
        self.grads["weight"] += xp.einsum("mi,mi->i", dy2d, xhat2d)        # sum over rows of dy * xhat
        self.grads["bias"] += dy2d.sum(axis=0)
        dxhat = dy * self.params["weight"]
        dx = dxhat - row_mean(dxhat)
        dx -= self.xhat * row_mean(dxhat * self.xhat)
        dx *= self.rstd
        return dx
