"""The array-module switch: NumPy on the CPU or CuPy on an NVIDIA GPU.

This is the only module in npvit that imports CuPy or moves arrays between the
host and the device. Layers never branch on the backend: they ask for
``xp = get_array_module(x)`` (as Chainer does) and write the math once.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

BACKENDS = ("numpy", "cupy")
DTYPES = ("float32", "float64")

try:  # CuPy is optional: importing npvit must work without it.
    import cupy as _cupy
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


# Every request to move data between host and device goes through this module and is counted here,
# so tests can assert that a training step moves nothing (on NumPy the "moves" are free, but the
# same code on CuPy would pay a transfer and a synchronisation for each).
TRANSFERS = Counter()


def get_xp(backend: str):
    """Return the array module for ``backend`` ("numpy" or "cupy")."""
    if backend == "numpy":
        return np
    if backend == "cupy":
        if _cupy is None:
            raise ValueError(
                "backend='cupy' needs CuPy, which is not installed; install the "
                "build matching your CUDA (e.g. pip install cupy-cuda12x) or use backend='numpy'"
            )
        if not cupy_available():
            raise ValueError("backend='cupy' needs a CUDA GPU, and CuPy sees none; use backend='numpy'")
        return _cupy
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def get_array_module(*arrays):
    """The module (numpy or cupy) that owns ``arrays``, as cupy.get_array_module."""
    if _cupy is not None:
        return _cupy.get_array_module(*arrays)
    return np


def on_host(x) -> bool:
    """True for a NumPy array (reading it costs nothing), False for one on a GPU."""
    return isinstance(x, np.ndarray)


def backend_name(xp) -> str:
    return "cupy" if (_cupy is not None and xp is _cupy) else "numpy"


def check_dtype(dtype) -> np.dtype:
    """Validate a float dtype name for the model ("float32" for training, "float64" for checks)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {DTYPES}")
    return np.dtype(name)


def to_device(x, xp):
    """Copy a host array to ``xp``'s device (no copy when it is already there)."""
    TRANSFERS["to_device"] += 1
    if xp is np:
        return to_numpy(x)
    return xp.asarray(x)


def to_numpy(x):
    """Copy an array to the host as a NumPy array (no copy for NumPy input)."""
    TRANSFERS["to_host"] += 1
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def host_array(v):
    """A weight from anywhere as a NumPy array: NumPy, CuPy, or a torch tensor (read without importing torch)."""
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return to_numpy(v)


def to_host_scalar(x) -> float:
    """Read a 0-d device array as a Python float (on CuPy: a device-to-host copy and a sync)."""
    TRANSFERS["to_host"] += 1
    return float(x)


def default_rng(xp, seed):
    """A random Generator on ``xp``'s device (numpy or cupy), for dropout masks and augmentation."""
    return xp.random.default_rng(seed)


def seed_for(*keys) -> int:
    """A 32-bit seed derived from a tuple of ints (seed, epoch, step, stream): independent streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def erf(x):
    """The error function, elementwise, on either backend (for the exact GELU)."""
    if _cupy is not None and isinstance(x, _cupy.ndarray):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    try:
        import scipy.special
    except ImportError as e:  # pragma: no cover - scipy is in the test extra
        raise ImportError(
            "the exact (erf) GELU on NumPy needs SciPy: pip install scipy "
            "(or use the tanh approximation, the article's default)"
        ) from e
    return scipy.special.erf(x)
