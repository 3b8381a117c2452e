"""Linear (fully connected) layer: y = x W^T + b, as torch.nn.Linear."""
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
        self.x_shape = x.shape
        self.x2d = x.reshape(-1, self.in_features)           # (M, Din), M = product of leading dims
        y = self.x2d @ self.params["weight"].T                 # (M, Dout): one GEMM, W^T is a view
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy):
        # y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum over rows of dy
        dy2d = dy.reshape(-1, self.out_features)               # (M, Dout)
        self.grads["weight"] += dy2d.T @ self.x2d
        if "bias" in self.params:
            self.grads["bias"] += dy2d.sum(axis=0)
        dx = dy2d @ self.params["weight"]                       # (M, Din)
        return dx.reshape(self.x_shape)
