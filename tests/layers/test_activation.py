import numpy as np
import pytest
import torch

from npvit.gradcheck import check_layer_gradients
from npvit.layers import GELU
from tests.conftest import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device
from tests.reference.article_vit import NewGELUActivation


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
