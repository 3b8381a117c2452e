"""Every ViT layer, each with a hand-written forward and backward."""
from .activation import GELU
from .attention import MultiHeadSelfAttention, softmax
from .base import Layer
from .block import MLP, Block, Encoder
from .conv import Conv2d, PatchEmbeddings, col2im, im2col, patchify, unpatchify
from .dropout import Dropout
from .embedding import Embeddings
from .linear import Linear
from .norm import LayerNorm

__all__ = ["Layer", "Linear", "LayerNorm", "GELU", "Dropout", "Conv2d", "PatchEmbeddings", "Embeddings",
           "MultiHeadSelfAttention", "MLP", "Block", "Encoder", "im2col", "col2im", "patchify", "unpatchify",
           "softmax"]
