"""npvit: a Vision Transformer on NumPy/CuPy with every backward pass written by hand."""
from .backend import cupy_available, get_array_module, get_xp, to_device, to_numpy
from .config import ViTConfig
from .losses import log_softmax, softmax_cross_entropy
from .model import ViT
from .parallel import DataParallel

__version__ = "0.1.0"

__all__ = ["ViT", "DataParallel", "ViTConfig", "softmax_cross_entropy", "log_softmax", "get_xp", "get_array_module",
           "to_device", "to_numpy", "cupy_available", "__version__"]
