import numpy as np
import pytest
import torch

from npvit.gradcheck import check_layer_gradients
from npvit.layers import GELU
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device
from reference.article_vit import NewGELUActivation


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("shape", [(2, 5, 12), (7,)])
def test_gradcheck(approximate, shape, xp):
    x = to_device(2 * np.random.default_rng(0).standard_normal(shape), xp)
    check_layer_gradients(GELU(approximate), x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_matches_torch(dtype, approximate, backend):
    x = 3 * np.random.default_rng(0).standard_normal((2, 5, 12))
    compare_with_torch(GELU(approximate), torch.nn.GELU(approximate=approximate), x, dtype, backend)


def test_tanh_form_is_the_articles_new_gelu():
    x = np.linspace(-6, 6, 101)
    ref = NewGELUActivation()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(GELU("tanh").forward(x), ref, rtol=1e-13, atol=1e-15)


def test_float32_stays_float32():
    for approximate in ("tanh", "none"):
        gelu = GELU(approximate)
        y = gelu.forward(np.ones(4, dtype=np.float32))
        assert y.dtype == np.float32
        assert gelu.backward(y).dtype == np.float32


def test_unknown_approximation_is_a_clear_error():
    with pytest.raises(ValueError, match="approximate"):
        GELU("sigmoid")


def test_tanh_form_is_exact_and_silent_at_extremes():
    """The fast set computes it as x sigmoid(2u): no overflow warning where exp(-2u) = inf, and float32 keeps
    its digits for negative x, where the reference's 0.5 x (1 + tanh(u)) cancels. (The numba set's float32
    exp is bounded in ulp by tests/ops/test_numba.py.)"""
    import warnings

    x64 = np.array([-1e4, -100.0, -12.0, -10.0, -6.0, -3.0, -0.5, 0.0, 0.5, 3.0, 12.0, 100.0, 1e4])
    gelu = GELU("tanh").use_kernels("fast")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = gelu.forward(x64.astype(np.float32))
        dx = gelu.backward(np.ones_like(y))
    ref = NewGELUActivation()(torch.tensor(x64)).numpy()
    xt = torch.tensor(x64, requires_grad=True)
    NewGELUActivation()(xt).sum().backward()
    np.testing.assert_allclose(y, ref, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-6, atol=1e-30)
