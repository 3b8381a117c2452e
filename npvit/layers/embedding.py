"""ViT input embeddings (Dosovitskiy et al. 2020, eq. 1): patches, a learned [CLS] token
prepended, learned position embeddings added, then dropout."""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .base import Layer, trunc_normal
from .conv import PatchEmbeddings
from .dropout import Dropout


class Embeddings(Layer):
    """images (B, C, H, W) -> tokens (B, N, D), N = Np + 1, token 0 is [CLS].

    cls_token (1, 1, D) and position_embeddings (1, N, D) are truncated-normal
    at init, as the article's ``_init_weights``.
    """

    def __init__(self, image_size, patch_size, num_channels, hidden_size, dropout=0.0, rng=None, std=0.02,
                 patch_overlap=0):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.patch_embeddings = PatchEmbeddings(image_size, patch_size, num_channels, hidden_size, rng=rng, std=std,
                                                overlap=patch_overlap)
        N = self.patch_embeddings.num_patches + 1
        self.add_param("cls_token", trunc_normal(rng, (1, 1, hidden_size), std))
        self.add_param("position_embeddings", trunc_normal(rng, (1, N, hidden_size), std))
        self.dropout = Dropout(dropout)

    def forward(self, x):
        xp = get_array_module(x)
        patches = self.patch_embeddings.forward(x)               # (B, Np, D)
        B, Np, D = patches.shape
        tokens = xp.empty((B, Np + 1, D), dtype=patches.dtype)   # (B, N, D)
        tokens[:, :1] = self.params["cls_token"]
        tokens[:, 1:] = patches
        tokens += self.params["position_embeddings"]
        return self.dropout.forward(tokens)

    def backward(self, dy, input_grad=True):
        # tokens = concat(cls, patches) + pos  =>  dpos = sum_b dy, dcls = sum_b dy[:, 0], dpatches = dy[:, 1:]
        dy = self.dropout.backward(dy)
        self.grads["position_embeddings"] += self.kernels.reduce_sum(dy, 0, keepdims=True)       # (1, N, D)
        self.grads["cls_token"] += self.kernels.reduce_sum(dy[:, :1], 0, keepdims=True)         # (1, 1, D)
        return self.patch_embeddings.backward(dy[:, 1:], input_grad)
