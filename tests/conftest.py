"""Shared fixtures: the backends (numpy always, cupy when a GPU is there), tolerances per dtype."""
import numpy as np
import pytest

from npvit.backend import cupy_available, get_xp, to_numpy

# Relative tolerances for comparisons against PyTorch, one place for the whole suite.
TORCH_RTOL = {"float64": 1e-10, "float32": 1e-4}
GRADCHECK_TOL = 1e-6

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]

# The kernel sets (npvit/ops) beside the reference; numba runs on the numpy backend only, fused on cupy only.
FAST_SETS = ["fast", "numba", pytest.param("fused", marks=pytest.mark.gpu)]
KERNEL_SETS = FAST_SETS + ["reference"]


def skip_unless_runs(kernels, backend="numpy"):
    """Skip a case of kernel set ``kernels`` that cannot run on ``backend`` here: numba on the GPU, or
    where Numba is not installed (it is in the test extra, so CI runs every case); fused off the GPU."""
    if kernels == "fused" and backend != "cupy":
        pytest.skip("the fused kernels run on CUDA only")
    if kernels == "numba":
        if backend != "numpy":
            pytest.skip("the numba kernels are CPU loops for the numpy backend")
        pytest.importorskip("numba")


def _torch_in_ieee_float32():
    """PyTorch on CUDA lets cuDNN convolutions use TF32 (10-bit mantissa) by default, an error of about
    5e-4 in float32: the comparisons against it need true float32 (we never use TF32)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is in the test extra
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


_torch_in_ieee_float32()


def _impossible(item):
    """A case pairing a kernel set with the backend it cannot run on (numba on cupy, fused on numpy): the
    parametrisation's cross product makes it, no machine can run it, so it is not collected."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (params.get("kernels"), params.get("backend")) in (("numba", "cupy"), ("fused", "numpy"))


def pytest_collection_modifyitems(config, items):
    keep, impossible = [], []
    for item in items:
        (impossible if _impossible(item) else keep).append(item)
    if impossible:
        config.hook.pytest_deselected(items=impossible)
        items[:] = keep
    if cupy_available():
        return
    skip = pytest.mark.skip(reason="CuPy with a CUDA GPU is not available on this machine")
    for item in items:
        if item.get_closest_marker("gpu") is not None:   # a marker, not a keyword: a folder named gpu is one too
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def xp(backend):
    return get_xp(backend)


@pytest.fixture(scope="session")
def real_data(tmp_path_factory):
    """A folder holding the real cifar-10-batches-py/ (tests/cifar_fixtures.real_cifar), or a skip saying how."""
    from tests.cifar_fixtures import REAL_CIFAR_HOWTO, real_cifar

    root = real_cifar(tmp_path_factory.mktemp("cifar10"))
    if root is None:
        pytest.skip(REAL_CIFAR_HOWTO)
    return str(root)


def rel_err(a, b):
    """max |a - b| / max |b|: a relative error that is not fooled by elements near zero."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
