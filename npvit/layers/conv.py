"""2-D convolution as im2col + one GEMM, and the ViT patch embedding built on it.

The article's patch embedding is ``nn.Conv2d(C, D, kernel_size=P, stride=P)``:
a convolution whose windows tile the image. For that case im2col is a pure
reshape/transpose; the general im2col/col2im below (any kernel, stride,
padding) computes the same columns and is kept as the reference.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .base import Layer, normal


def conv_output_size(size, kernel, stride, padding):
    out = (size + 2 * padding - kernel) // stride + 1
    if out <= 0:
        raise ValueError(f"kernel {kernel} with stride {stride} and padding {padding} does not fit input size {size}")
    return out


def im2col(x, kh, kw, stride=1, padding=0):
    """x (B, C, H, W) -> cols (B, OH, OW, C, kh, kw): every receptive field, gathered.

    Loops over the kh*kw kernel offsets (not over pixels or images): each offset
    takes one strided slice of the padded input for all windows at once.
    """
    xp = get_array_module(x)
    B, C, H, W = x.shape
    OH = conv_output_size(H, kh, stride, padding)
    OW = conv_output_size(W, kw, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((B, C, kh, kw, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3)                     # (B, OH, OW, C, kh, kw)


def col2im(cols, x_shape, stride=1, padding=0):
    """The adjoint of im2col: cols (B, OH, OW, C, kh, kw) -> dx (B, C, H, W).

    Windows that overlap add their contributions (that is what makes it the
    gradient of im2col); padding is cut off at the end.
    """
    xp = get_array_module(cols)
    B, C, H, W = x_shape
    _, OH, OW, _, kh, kw = cols.shape
    cols = cols.transpose(0, 3, 4, 5, 1, 2)                     # (B, C, kh, kw, OH, OW)
    dx = xp.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += cols[:, :, i, j]
    return dx[:, :, padding:padding + H, padding:padding + W]


def patchify(x, p):
    """im2col for kernel = stride = p, no padding: a pure reshape/transpose.

    x (B, C, H, W) -> (B, H/p, W/p, C, p, p), the same as im2col(x, p, p, p).
    """
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)


def unpatchify(cols, x_shape):
    """The inverse (and adjoint) of patchify: (B, H/p, W/p, C, p, p) -> (B, C, H, W)."""
    return cols.transpose(0, 3, 1, 4, 2, 5).reshape(x_shape)


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

    def tiles(self, x_shape):
        """True when the windows tile the image exactly, so im2col is a reshape."""
        return (self.k == self.stride and self.padding == 0
                and x_shape[2] % self.k == 0 and x_shape[3] % self.k == 0)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects input (B, {self.in_channels}, H, W), got shape {x.shape}")
        k, s, p = self.k, self.stride, self.padding
        self.x_shape = x.shape
        self.tiled = self.tiles(x.shape)
        cols = patchify(x, k) if self.tiled else im2col(x, k, k, s, p)  # (B, OH, OW, C, k, k)
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
        if self.tiled:
            return unpatchify(dcols, self.x_shape)
        return col2im(dcols, self.x_shape, self.stride, self.padding)


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
