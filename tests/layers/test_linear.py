import numpy as np
import pytest
import torch

from npvit.gradcheck import check_layer_gradients
from npvit.layers import Linear
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device


@pytest.mark.parametrize("shape,out,bias", [((2, 5, 12), 7, True), ((3, 4), 5, False), ((2, 3, 4, 6), 1, True)])
def test_gradcheck(shape, out, bias, xp):
    x = to_device(np.random.default_rng(0).standard_normal(shape), xp)
    layer = Linear(shape[-1], out, bias=bias, rng=np.random.default_rng(1), std=0.5).to(xp)
    check_layer_gradients(layer, x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(dtype, bias, backend):
    layer = Linear(12, 7, bias=bias, rng=np.random.default_rng(1), std=0.3)
    x = np.random.default_rng(0).standard_normal((2, 5, 12))
    compare_with_torch(layer, torch.nn.Linear(12, 7, bias=bias), x, dtype, backend)


def test_wrong_width_is_a_clear_error():
    with pytest.raises(ValueError, match="last dimension 12"):
        Linear(12, 3).forward(np.zeros((2, 5, 11)))
