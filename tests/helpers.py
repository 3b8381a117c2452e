"""Helpers shared by the tests: copy weights between npvit and torch, compare forward and every gradient."""
import numpy as np

from npvit.backend import get_xp, to_device, to_numpy
from tests.conftest import TORCH_RTOL, rel_err

try:
    import torch
except ImportError:  # pragma: no cover - torch is in the test extra
    torch = None


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
