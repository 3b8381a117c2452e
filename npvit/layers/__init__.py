"""Every ViT layer, each with a forward and backward that call its kernel set (npvit/ops)."""
from .activation import GELU
from .attention import MultiHeadSelfAttention
from .base import Layer
from .block import MLP, Block, Encoder
from ..ops.reference import col2im, im2col
from .conv import Conv2d, PatchEmbeddings
from .dropout import DropPath, Dropout, PatchDropout
from .embedding import Embeddings
from .linear import Linear
from .norm import LayerNorm

__all__ = ["Layer", "Linear", "LayerNorm", "GELU", "Dropout", "DropPath", "PatchDropout", "Conv2d", "PatchEmbeddings", "Embeddings",
           "MultiHeadSelfAttention", "MLP", "Block", "Encoder", "im2col", "col2im"]
