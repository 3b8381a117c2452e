"""Helpers shared by the tests: relative error, the kernel sets to parametrise over, copying weights between
npvit and torch, comparing a forward and every gradient."""
import numpy as np
import pytest

from npvit.backend import get_xp, to_device, to_numpy
from npvit.ops import BY_NAME, REGISTRY
from tests.tolerances import TORCH_RTOL

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the test extra
    torch = None


def rel_err(a, b):
    """max |a - b| / max |b|: a relative error that is not fooled by elements near zero."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# The kernel sets (npvit/ops), from its registry: a set that runs on CUDA alone is a GPU case.
FAST_SETS = [pytest.param(r.name, marks=pytest.mark.gpu) if r.backends == ("cupy",) else r.name
             for r in REGISTRY if r.name != "reference"]
KERNEL_SETS = FAST_SETS + ["reference"]


def skip_unless_runs(kernels, backend="numpy"):
    """Skip a case of kernel set ``kernels`` that cannot run on ``backend`` here: a set for another backend
    (numba on the GPU, fused on the CPU), or one whose library is not installed (Numba is in the test extra,
    so CI runs every CPU case)."""
    entry = BY_NAME[kernels]
    if backend not in entry.backends:
        pytest.skip(f"the {kernels} kernels run on {' or '.join(entry.backends)} only")
    for module in entry.needs:
        pytest.importorskip(module)


def torch_device(backend):
    return "cuda" if backend == "cupy" else "cpu"


def to_torch(a, dtype, backend, requires_grad=False):
    t = torch.tensor(to_numpy(a), dtype=getattr(torch, dtype), device=torch_device(backend))
    return t.requires_grad_(requires_grad)


def prepare(layer, dtype, backend):
    """Cast an npvit layer to dtype and move it to the backend's device."""
    layer.astype(np.dtype(dtype)).to(get_xp(backend))
    return layer


def copy_to_torch(layer, module, dtype, backend):
    """Load the npvit layer's parameters into the torch module by name (names are the same)."""
    module.to(dtype=getattr(torch, dtype), device=torch_device(backend))
    sd = {k: torch.tensor(to_numpy(v)) for k, v in layer.parameters().items()}
    module.load_state_dict(sd, strict=True)
    return module


def assert_close(ours, theirs, dtype, what):
    err = rel_err(to_numpy(ours), theirs.detach().cpu().numpy() if hasattr(theirs, "detach") else theirs)
    assert err < TORCH_RTOL[dtype], f"{what}: relative error {err:.2e} >= {TORCH_RTOL[dtype]:g} ({dtype})"


def compare_with_torch(layer, module, x_np, dtype, backend, torch_forward=None, seed=0):
    """Same weights, same input: forward output, dx and every parameter gradient agree."""
    xp = get_xp(backend)
    prepare(layer, dtype, backend)
    copy_to_torch(layer, module, dtype, backend)
    x = to_device(np.asarray(x_np, dtype=dtype), xp)
    xt = to_torch(x_np, dtype, backend, requires_grad=True)
    y = layer.forward(x)
    yt = (torch_forward or module)(xt)
    yt = yt[0] if isinstance(yt, tuple) else yt
    assert y.dtype == np.dtype(dtype), f"forward output is {y.dtype}, expected {dtype}"
    assert_close(y, yt, dtype, "forward")
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(to_device(dy.astype(dtype), xp))
    yt.backward(to_torch(dy, dtype, backend))
    assert dx.dtype == np.dtype(dtype)
    assert_close(dx, xt.grad, dtype, "dx")
    named = dict(module.named_parameters())
    grads = layer.gradients()
    assert set(grads) == set(named), f"parameter names differ: {set(grads) ^ set(named)}"
    for name, g in grads.items():
        assert g.dtype == np.dtype(dtype), f"grad {name} is {g.dtype}"
        assert_close(g, named[name].grad, dtype, f"grad {name}")
