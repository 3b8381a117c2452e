"""Every layer's math as forward/backward function pairs, in implementations with one meaning.

``reference``: the plain formulas, written to be read (npvit/ops/reference.py).
``fast``: the same signatures with NumPy speed tricks (npvit/ops/numpy_fast.py).
``numba``: the same signatures as fused CPU loops compiled by Numba (npvit/ops/numba_cpu.py), for
the numpy backend; needs Numba.
``fused``: the same signatures as fused CUDA kernels (npvit/ops/cupy_fused.py), for the cupy backend.
A model picks one set once, ``ViT(config, kernels="auto" | "numba" | "fused" | "fast" | "reference")``;
layers call the set they were given and contain no backend or speed branches. ``"auto"`` is the
fastest set that runs here: fused on the cupy backend, numba on the numpy backend when Numba is
installed, otherwise fast.
"""
from importlib.util import find_spec

from . import numpy_fast, reference

NAMED = ("auto", "numba", "fused", "fast", "reference")


def auto_kernels(backend="numpy"):
    """The name of the set ``"auto"`` picks on ``backend``: fused on cupy, numba on numpy where Numba is
    installed, otherwise fast."""
    if backend == "cupy":
        return "fused"
    return "numba" if backend == "numpy" and find_spec("numba") is not None else "fast"


def kernels_name(kernels):
    """The name of a kernel set module ("numba", "fused", "fast", "reference"), or its type's name."""
    return {"npvit.ops.numba_cpu": "numba", "npvit.ops.cupy_fused": "fused", "npvit.ops.numpy_fast": "fast",
            "npvit.ops.reference": "reference"}.get(getattr(kernels, "__name__", None), type(kernels).__name__)


def get_kernels(kernels="fast", backend="numpy"):
    """The kernel set named ``kernels`` (one of NAMED), or a module passed as is."""
    if isinstance(kernels, str):
        if kernels == "auto":
            kernels = auto_kernels(backend)
        if kernels == "numba":                  # compiled loops: imported only when asked for
            if backend != "numpy":
                raise ValueError(f"kernels='numba' are CPU loops for the numpy backend, not {backend!r}")
            try:
                from . import numba_cpu
            except ImportError as e:
                raise ValueError("kernels='numba' need Numba, which is not installed "
                                 "(pip install numba, or the [train] extra); or use kernels='fast'") from e
            return numba_cpu
        if kernels == "fused":                  # CuPy kernels: imported only when asked for
            if backend != "cupy":
                raise ValueError("kernels='fused' are CUDA kernels: use backend='cupy', or kernels='fast' on the CPU")
            try:
                from . import cupy_fused
            except ImportError as e:
                raise ValueError("kernels='fused' are CUDA kernels and need CuPy, which is not installed; "
                                 "use kernels='fast' on the CPU") from e
            return cupy_fused
        if kernels not in ("fast", "reference"):
            raise ValueError(f"unknown kernels {kernels!r}; choose one of {list(NAMED)}")
        return numpy_fast if kernels == "fast" else reference
    missing = [n for n in reference.NAMES if not callable(getattr(kernels, n, None))]
    if missing:
        raise ValueError(f"a kernel set must define {missing}")
    return kernels
