"""Every layer's math, as kernel sets that fulfil one written contract (npvit/ops/contract.py).

The sets are listed once, in REGISTRY below, fastest first; everything else (``"auto"``, the names
``--kernels`` accepts, :func:`available_kernels`, the benchmarks and the tests' kernel matrix) is
derived from it. A set is its own file ending with its KernelSet table (npvit/ops/kernelset.py)
plus one line here. The composites over the primitives (Linear, the convolution, the attention
core) are written once, in npvit/ops/composites.py. A model picks one set once,
``ViT(config, kernels="auto" | "numba" | ...)``; layers call the set they were given and contain
no backend or speed branches. ``"auto"`` is the first set of the registry that runs on the
backend with its library installed: fused on cupy, numba on numpy where Numba is installed,
otherwise fast. ``"capturable"`` (fused's kernels with our own GEMM in place of cuBLAS's) is
asked for by name, or by ``--cuda-graph``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Optional

from .kernelset import KernelSet


@dataclass(frozen=True)
class Registered:
    """One kernel set as the registry knows it, before (and without) importing it."""
    name: str
    where: str                  # "module:ATTRIBUTE" of its KernelSet table
    backends: tuple             # the array backends it runs on
    what: str                   # what it is, in a few words (help text and messages)
    needs: tuple = ()               # the modules it imports that may not be installed (("numba",))
    library: str = ""               # those libraries' names in words ("Numba")
    install: str = ""               # how to install it

    def load(self) -> KernelSet:
        module, attribute = self.where.split(":")
        kernels = getattr(importlib.import_module(module), attribute)
        if (kernels.name, kernels.backends) != (self.name, self.backends):
            raise TypeError(f"{self.where} is the kernel set {kernels.name!r} for {kernels.backends}, but the "
                            f"registry lists it as {self.name!r} for {self.backends}")
        return kernels

    def installed(self, backend=None) -> bool:
        """Its library is installed (on ``backend``'s own library, such as CuPy on cupy, it counts as there)."""
        return all(module == backend or find_spec(module) is not None for module in self.needs)


# The kernel sets, fastest first. Adding one: its file, and its line here.
REGISTRY = (
    Registered("numba", "npvit.ops.numba_cpu:NUMBA", ("numpy",), "CPU loops",
               needs=("numba",), library="Numba", install="pip install numba, or the [train] extra"),
    Registered("fused", "npvit.ops.cupy_fused:FUSED", ("cupy",), "CUDA kernels",
               needs=("cupy",), library="CuPy", install="pip install cupy-cuda12x or cupy-cuda13x"),
    Registered("capturable", "npvit.ops.cupy_capturable:CAPTURABLE", ("cupy",), "CUDA kernels, no cuBLAS: what "
               "a CUDA graph can capture (--cuda-graph)", needs=("cupy", "numba"),
               library="CuPy and numba-cuda", install="pip install cupy-cuda13x numba-cuda"),
    Registered("fast", "npvit.ops.numpy_fast:FAST", ("numpy", "cupy"), "NumPy speed tricks"),
    Registered("reference", "npvit.ops.reference:REFERENCE", ("numpy", "cupy"), "the plain formulas, to be read"),
)
BY_NAME = {r.name: r for r in REGISTRY}
NAMED = ("auto",) + tuple(BY_NAME)          # what kernels= and --kernels accept
BACKENDS = ("numpy", "cupy")


def described():
    """The sets in words, fastest first, for --help: "numba (CPU loops, needs Numba; numpy backend), ..."."""
    return ", ".join(f"{r.name} ({r.what}{', needs ' + r.library if r.library else ''}; "
                     f"{' or '.join(r.backends)} backend)" for r in REGISTRY)


def auto_kernels(backend="numpy"):
    """The name of the set ``"auto"`` picks on ``backend``: the registry's first that runs there, its library
    installed (fused on cupy, numba on numpy where Numba is installed, otherwise fast)."""
    return next(r.name for r in REGISTRY if backend in r.backends and r.installed(backend))


def kernels_name(kernels):
    """The name of a kernel set ("numba", "fused", "fast", "reference", or a set of one's own)."""
    return kernels.name if isinstance(kernels, KernelSet) else type(kernels).__name__


def get_kernels(kernels="reference", backend="numpy"):
    """The kernel set named ``kernels`` (one of NAMED) for ``backend``, or a KernelSet passed as is. A set whose
    library is missing, or that does not run on ``backend``, is a ValueError naming the set and the way out."""
    if isinstance(kernels, KernelSet):
        if backend not in kernels.backends:
            raise ValueError(f"kernel set {kernels.name!r} runs on {list(kernels.backends)}, not {backend!r}")
        return kernels
    if not isinstance(kernels, str):
        raise ValueError(f"kernels must be one of {list(NAMED)} or a KernelSet (npvit.ops.kernelset), "
                         f"got {type(kernels).__name__}")
    if kernels == "auto":
        kernels = auto_kernels(backend)
    if kernels not in BY_NAME:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {list(NAMED)}")
    entry = BY_NAME[kernels]
    if backend not in entry.backends:
        elsewhere = auto_kernels(backend)
        raise ValueError(f"kernels={kernels!r} are {entry.what} for the {' or '.join(entry.backends)} backend, "
                         f"not {backend!r}: use kernels={elsewhere!r} there")
    try:
        return entry.load()                 # a set that needs a library is imported only when asked for
    except ImportError as e:
        if entry.installed():
            raise                           # its library is there: a real import error, not a missing package
        raise ValueError(f"kernels={kernels!r} need {entry.library}, which is not installed "
                         f"({entry.install}); or use kernels='fast'") from e


def available_kernels(backend="numpy"):
    """The registered sets that run on ``backend`` on this machine (their libraries installed), reference first."""
    return [r.load() for r in reversed(REGISTRY) if backend in r.backends and r.installed()]
