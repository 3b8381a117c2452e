"""Layer normalisation over the last dimension (Ba, Kiros & Hinton 2016), as torch.nn.LayerNorm (math in npvit/ops)."""
from __future__ import annotations

import numpy as np

from .base import Layer


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
        y, self.cache = self.kernels.layernorm_forward(x, self.params["weight"], self.params["bias"], self.eps)
        return y

    def backward(self, dy):
        # y = xhat * w + b:  dw = sum(dy * xhat), db = sum(dy),
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dy * w
        dx, dw, db = self.kernels.layernorm_backward(dy, self.cache, self.params["weight"])
        self.accumulate(weight=dw, bias=db)
        return dx
