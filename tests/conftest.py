"""Shared fixtures: the backends (numpy always, cupy when a GPU is there), real CIFAR-10 where it can be made;
and which parametrised cases are collected. Tolerances: tests/tolerances.py; helpers: tests/helpers.py."""
import pytest

from npvit.backend import cupy_available, get_xp
from npvit.ops import BY_NAME

BACKENDS = ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)]


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
    kernels, backend = params.get("kernels"), params.get("backend")
    return kernels in BY_NAME and isinstance(backend, str) and backend not in BY_NAME[kernels].backends


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
