"""2-D convolution as im2col + one GEMM, and the ViT patch embedding built on it.

The article's patch embedding is ``nn.Conv2d(C, D, kernel_size=P, stride=P)``:
a convolution whose windows tile the image. The math is the composite
``conv2d_forward``/``conv2d_backward`` (npvit/ops/composites.py) over the kernel set's
im2col/col2im and GEMM; the fast sets turn the tiling im2col into a pure reshape.
"""
from __future__ import annotations

import numpy as np

from ..ops.reference import conv_output_size
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
        conv_output_size(x.shape[2], self.k, self.stride, self.padding)     # a window that does not fit: say so
        conv_output_size(x.shape[3], self.k, self.stride, self.padding)
        # cols = im2col(x) (B*OH*OW, C*k*k),  y = cols W^T + b,  as (B, D, OH, OW)
        y, self.cache = self.kernels.conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                                                    self.stride, self.padding)
        return y

    def backward(self, dy, input_grad=True):
        # y = cols W^T + b  =>  dW = dy^T cols, db = sum(dy), dcols = dy W, dx = col2im(dcols) (None: not asked)
        dx, dw, db = self.kernels.conv2d_backward(dy, self.cache, self.params["weight"], input_grad)
        self.accumulate(weight=dw, bias=db)
        return dx


class PatchEmbeddings(Layer):
    """Split the image into P x P patches and project each to D: (B, C, H, W) -> (B, Np, D).

    ``projection`` is Conv2d(C, D, kernel=stride=P), so its weights load from
    the article's ``embedding.patch_embeddings.projection``. With ``overlap`` o > 0 each
    patch's window reaches o pixels past the patch on every side (kernel P + 2o, stride P,
    zero padding o): the same Np tokens, each also seeing its neighbours' edges.
    """

    def __init__(self, image_size, patch_size, num_channels, hidden_size, rng=None, std=0.02, overlap=0):
        super().__init__()
        self.image_size, self.patch_size, self.num_channels = image_size, patch_size, num_channels
        self.num_patches = (image_size // patch_size) ** 2
        self.projection = Conv2d(num_channels, hidden_size, patch_size + 2 * overlap, stride=patch_size,
                                 padding=overlap, rng=rng, std=std)

    def forward(self, x):
        y = self.projection.forward(x)                           # (B, D, H/P, W/P)
        B, D = y.shape[:2]
        self.grid = y.shape[2:]
        return y.reshape(B, D, -1).transpose(0, 2, 1)            # (B, Np, D): a view of the GEMM output

    def backward(self, dy, input_grad=True):
        B, Np, D = dy.shape
        return self.projection.backward(dy.transpose(0, 2, 1).reshape(B, D, *self.grid),   # (B, D, H/P, W/P)
                                        input_grad)
