"""2-D convolution as im2col + one GEMM, and the ViT patch embedding built on it.

The article's patch embedding is ``nn.Conv2d(C, D, kernel_size=P, stride=P)``:
a convolution whose windows tile the image. im2col/col2im (any kernel, stride,
padding) are in npvit/ops; the fast set turns the tiling case into a pure reshape.
"""
from __future__ import annotations

import numpy as np

from ..ops.reference import col2im, conv_output_size, im2col  # noqa: F401  (the reference, re-exported)
from .base import Layer, normal


class Conv2d(Layer):
    """x (B, C, H, W) -> y (B, D, OH, OW) as torch.nn.Conv2d; weight (D, C, kh, kw), bias (D,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None, std=0.02):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.k, self.stride, self.padding = kernel_size, stride, padding
        self.add_param("weight", normal(rng, (out_channels, in_channels, kernel_size, kernel_size), std))
        if bias:
            self.add_param("bias", np.zeros(out_channels))

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects input (B, {self.in_channels}, H, W), got shape {x.shape}")
        k, s, p = self.k, self.stride, self.padding
        self.x_shape = x.shape
        cols = self.kernels.im2col(x, k, k, s, p)               # (B, OH, OW, C, k, k)
        B, OH, OW = cols.shape[:3]
        self.cols = cols.reshape(B * OH * OW, -1)                # (B*OH*OW, C*k*k): the one copy
        w2d = self.params["weight"].reshape(self.out_channels, -1)  # (D, C*k*k)
        y = self.cols @ w2d.T                                    # (B*OH*OW, D)
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(B, OH, OW, self.out_channels).transpose(0, 3, 1, 2)  # (B, D, OH, OW), a view

    def backward(self, dy):
        # y = cols W^T + b  =>  dW = dy^T cols, db = sum(dy), dcols = dy W, dx = col2im(dcols)
        B, D, OH, OW = dy.shape
        dy2d = dy.transpose(0, 2, 3, 1).reshape(B * OH * OW, D)   # (B*OH*OW, D)
        w2d = self.params["weight"].reshape(D, -1)
        self.grads["weight"] += (dy2d.T @ self.cols).reshape(self.params["weight"].shape)
        if "bias" in self.params:
            self.grads["bias"] += dy2d.sum(axis=0)
        C, k = self.in_channels, self.k
        dcols = (dy2d @ w2d).reshape(B, OH, OW, C, k, k)
        return self.kernels.col2im(dcols, self.x_shape, self.stride, self.padding)


class PatchEmbeddings(Layer):
    """Split the image into P x P patches and project each to D: (B, C, H, W) -> (B, Np, D).

    ``projection`` is Conv2d(C, D, kernel=stride=P), so its weights load from
    the article's ``embedding.patch_embeddings.projection``.
    """

    def __init__(self, image_size, patch_size, num_channels, hidden_size, rng=None, std=0.02):
        super().__init__()
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.num_patches = (image_size // patch_size) ** 2
        self.projection = Conv2d(num_channels, hidden_size, patch_size, stride=patch_size, rng=rng, std=std)

    def forward(self, x):
        y = self.projection.forward(x)                           # (B, D, H/P, W/P)
        B, D = y.shape[:2]
        self.grid = y.shape[2:]
        return y.reshape(B, D, -1).transpose(0, 2, 1)            # (B, Np, D): a view of the GEMM output

    def backward(self, dy):
        B, Np, D = dy.shape
        return self.projection.backward(dy.transpose(0, 2, 1).reshape(B, D, *self.grid))
