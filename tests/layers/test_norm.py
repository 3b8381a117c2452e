import numpy as np
import pytest
import torch

from npvit.gradcheck import check_layer_gradients
from npvit.layers import LayerNorm
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device


def perturbed(dim, seed=1, eps=1e-5):
    """A LayerNorm whose weight and bias are not 1 and 0, so their gradients matter."""
    ln = LayerNorm(dim, eps)
    rng = np.random.default_rng(seed)
    ln.params["weight"] = 1 + 0.5 * rng.standard_normal(dim)
    ln.params["bias"] = 0.5 * rng.standard_normal(dim)
    return ln


@pytest.mark.parametrize("shape", [(2, 5, 12), (4, 7), (1, 1, 3)])
def test_gradcheck(shape, xp):
    x = to_device(3 + 2 * np.random.default_rng(0).standard_normal(shape), xp)
    check_layer_gradients(perturbed(shape[-1]).to(xp), x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("eps", [1e-5, 1e-12, 0.1])        # the article's and PyTorch's; transformers'; a large one
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_torch(dtype, eps, backend):
    x = 0.01 * np.random.default_rng(0).standard_normal((2, 5, 12))     # a variance (1e-4) near eps: it matters
    compare_with_torch(perturbed(12, eps=eps), torch.nn.LayerNorm(12, eps=eps), x, dtype, backend)
    if eps == 0.1 and dtype == "float64":                       # and it would fail with another epsilon
        with pytest.raises(AssertionError):
            compare_with_torch(perturbed(12, eps=1e-5), torch.nn.LayerNorm(12, eps=eps), x, dtype, backend)


def test_output_is_normalised():
    y = LayerNorm(16).forward(np.random.default_rng(0).standard_normal((3, 16)) * 5 + 2)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(-1), 1, rtol=1e-4)  # eps 1e-5 keeps it a hair under 1


def test_wrong_width_is_a_clear_error():
    with pytest.raises(ValueError, match="last dimension 12"):
        LayerNorm(12).forward(np.zeros((2, 13)))
