import numpy as np
import pytest

from npvit.gradcheck import check_layer_gradients
from npvit.layers import Embeddings
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device
from reference import article_vit as ref

CASES = [(8, 4, 3, 12), (28, 7, 1, 18), (32, 8, 3, 24)]  # (image, patch, C, D)


@pytest.mark.parametrize("image,patch,C,D", CASES)
def test_gradcheck(image, patch, C, D, xp):
    x = to_device(np.random.default_rng(0).standard_normal((2, C, image, image)), xp)
    emb = Embeddings(image, patch, C, D, rng=np.random.default_rng(1), std=0.3).to(xp)
    check_layer_gradients(emb, x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("image,patch,C,D", CASES)
def test_matches_article_embeddings(image, patch, C, D, dtype, backend):
    x = np.random.default_rng(0).standard_normal((2, C, image, image))
    module = ref.Embeddings(dict(image_size=image, patch_size=patch, num_channels=C, hidden_size=D,
                                 hidden_dropout_prob=0.0))
    compare_with_torch(Embeddings(image, patch, C, D, rng=np.random.default_rng(1), std=0.3), module, x, dtype,
                       backend)


def test_cls_token_is_first_and_positions_are_added():
    emb = Embeddings(8, 4, 3, 6, rng=np.random.default_rng(1))
    y = emb.forward(np.zeros((2, 3, 8, 8)))                      # zero image: patches are just the conv bias (0)
    np.testing.assert_array_equal(y[:, 0], np.broadcast_to(emb.params["cls_token"][0, 0] +
                                                           emb.params["position_embeddings"][0, 0], (2, 6)))
    np.testing.assert_array_equal(y[:, 1:], np.broadcast_to(emb.params["position_embeddings"][0, 1:], (2, 4, 6)))
