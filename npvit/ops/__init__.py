"""Every layer's math, as kernel sets that fulfil one written contract (npvit/ops/contract.py).

``reference``: the plain formulas, written to be read (npvit/ops/reference.py); what a lone layer runs.
``fast``: NumPy speed tricks (npvit/ops/numpy_fast.py).
``numba``: fused CPU loops compiled by Numba (npvit/ops/numba_cpu.py), for the numpy backend; needs Numba.
``fused``: fused CUDA kernels (npvit/ops/cupy_fused.py), for the cupy backend; needs CuPy.
The composites over them (Linear, the convolution, the attention core) are written once, in
npvit/ops/composites.py. A model picks one set once, ``ViT(config, kernels="auto" | "numba" |
"fused" | "fast" | "reference")``; layers call the set they were given and contain no backend or
speed branches. ``"auto"`` is the fastest set that runs here: fused on the cupy backend, numba on
the numpy backend when Numba is installed, otherwise fast.
"""
from importlib.util import find_spec

from .contract import KernelSet
from .numpy_fast import FAST
from .reference import REFERENCE

NAMED = ("auto", "numba", "fused", "fast", "reference")


def auto_kernels(backend="numpy"):
    """The name of the set ``"auto"`` picks on ``backend``: fused on cupy, numba on numpy where Numba is
    installed, otherwise fast."""
    if backend == "cupy":
        return "fused"
    return "numba" if backend == "numpy" and find_spec("numba") is not None else "fast"


def kernels_name(kernels):
    """The name of a kernel set ("numba", "fused", "fast", "reference", or a set of one's own)."""
    return kernels.name if isinstance(kernels, KernelSet) else type(kernels).__name__


def get_kernels(kernels="reference", backend="numpy"):
    """The kernel set named ``kernels`` (one of NAMED) for ``backend``, or a KernelSet passed as is."""
    if isinstance(kernels, KernelSet):
        if backend not in kernels.backends:
            raise ValueError(f"kernel set {kernels.name!r} runs on {list(kernels.backends)}, not {backend!r}")
        return kernels
    if not isinstance(kernels, str):
        raise ValueError(f"kernels must be one of {list(NAMED)} or a KernelSet (npvit.ops.contract), "
                         f"got {type(kernels).__name__}")
    if kernels == "auto":
        kernels = auto_kernels(backend)
    if kernels == "numba":                  # compiled loops: imported only when asked for
        if backend != "numpy":
            raise ValueError(f"kernels='numba' are CPU loops for the numpy backend, not {backend!r}")
        try:
            from .numba_cpu import NUMBA
        except ImportError as e:
            raise ValueError("kernels='numba' need Numba, which is not installed "
                             "(pip install numba, or the [train] extra); or use kernels='fast'") from e
        return NUMBA
    if kernels == "fused":                  # CuPy kernels: imported only when asked for
        if backend != "cupy":
            raise ValueError("kernels='fused' are CUDA kernels: use backend='cupy', or kernels='fast' on the CPU")
        try:
            from .cupy_fused import FUSED
        except ImportError as e:
            raise ValueError("kernels='fused' are CUDA kernels and need CuPy, which is not installed; "
                             "use kernels='fast' on the CPU") from e
        return FUSED
    if kernels not in ("fast", "reference"):
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {list(NAMED)}")
    return FAST if kernels == "fast" else REFERENCE


def available_kernels(backend="numpy"):
    """The named sets that run on ``backend`` on this machine (their libraries installed), reference first."""
    names = ["reference", "fast", "numba" if backend == "numpy" else "fused"]
    out = []
    for name in names:
        try:
            out.append(get_kernels(name, backend))
        except ValueError:
            pass
    return out
