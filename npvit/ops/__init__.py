"""Every layer's math as forward/backward function pairs, in implementations with one meaning.

``reference``: the plain formulas, written to be read (npvit/ops/reference.py).
``fast``: the same signatures with NumPy speed tricks (npvit/ops/numpy_fast.py), the default.
A model picks one set once, ``ViT(config, kernels="fast" | "reference")``; layers call the
set they were given and contain no backend or speed branches.
"""
from . import numpy_fast, reference

KERNELS = {"fast": numpy_fast, "reference": reference}


def get_kernels(kernels="fast"):
    """The kernel set named ``kernels`` ("fast" or "reference"), or a module passed as is."""
    if isinstance(kernels, str):
        if kernels not in KERNELS:
            raise ValueError(f"unknown kernels {kernels!r}; choose one of {list(KERNELS)}")
        return KERNELS[kernels]
    missing = [n for n in reference.NAMES if not callable(getattr(kernels, n, None))]
    if missing:
        raise ValueError(f"a kernel set must define {missing}")
    return kernels
