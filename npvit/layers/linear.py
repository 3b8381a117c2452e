"""Linear (fully connected) layer: y = x W^T + b, as torch.nn.Linear (math: the composite in npvit/ops/composites.py)."""
from __future__ import annotations

import numpy as np

from .base import Layer, normal


class Linear(Layer):
    """x (..., Din) -> y (..., Dout); weight (Dout, Din) as torch, bias (Dout,)."""

    def __init__(self, in_features, out_features, bias=True, rng=None, std=0.02):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = in_features, out_features
        self.add_param("weight", normal(rng, (out_features, in_features), std))
        if bias:
            self.add_param("bias", np.zeros(out_features))

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects last dimension {self.in_features}, got input of shape {x.shape}")
        y, self.cache = self.kernels.linear_forward(x, self.params["weight"], self.params.get("bias"))
        return y

    def backward(self, dy):
        # y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum over rows of dy
        dx, dw, db = self.kernels.linear_backward(dy, self.cache, self.params["weight"])
        self.accumulate(weight=dw, bias=db)
        return dx
