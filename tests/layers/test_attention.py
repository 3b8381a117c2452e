import numpy as np
import pytest
import torch

from npvit.backend import get_xp
from npvit.gradcheck import check_layer_gradients
from npvit.layers import MultiHeadSelfAttention
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, copy_to_torch, prepare, to_device, to_numpy, to_torch
from reference.article_vit import FasterMultiHeadAttention

SHAPES = [(2, 5, 12, 3), (3, 17, 48, 4), (1, 10, 36, 6), (2, 4, 8, 1)]  # (B, N, D, H)


def make(D, H, bias=True):
    return MultiHeadSelfAttention(D, H, qkv_bias=bias, rng=np.random.default_rng(1), std=0.3)


def ref(D, H, bias=True):
    return FasterMultiHeadAttention(dict(hidden_size=D, num_attention_heads=H, qkv_bias=bias,
                                         attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0))


@pytest.mark.parametrize("B,N,D,H", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(B, N, D, H, bias, xp):
    x = to_device(np.random.default_rng(0).standard_normal((B, N, D)), xp)
    check_layer_gradients(make(D, H, bias).to(xp), x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("B,N,D,H", SHAPES)
def test_matches_article_attention(B, N, D, H, dtype, backend):
    x = np.random.default_rng(0).standard_normal((B, N, D))
    compare_with_torch(make(D, H), ref(D, H), x, dtype, backend)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_scaled_dot_product_attention(dtype, backend):
    """The same layer written with torch's own F.scaled_dot_product_attention."""
    B, N, D, H = 2, 9, 24, 4
    layer = make(D, H)
    module = ref(D, H)

    def sdpa(x):
        q, k, v = torch.chunk(module.qkv_projection(x), 3, dim=-1)
        q, k, v = (t.view(B, N, H, D // H).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return module.output_projection(out.transpose(1, 2).reshape(B, N, D))

    compare_with_torch(layer, module, np.random.default_rng(0).standard_normal((B, N, D)), dtype, backend,
                       torch_forward=sdpa)


def test_returns_attention_probabilities(backend):
    B, N, D, H = 2, 7, 12, 3
    layer = prepare(make(D, H), "float64", backend)
    module = copy_to_torch(layer, ref(D, H), "float64", backend)
    x = np.random.default_rng(0).standard_normal((B, N, D))
    layer.forward(to_device(x, get_xp(backend)))
    att = layer.att                                   # the probabilities the layer keeps for backward
    _, att_t = module(to_torch(x, "float64", backend), output_attentions=True)
    assert att.shape == (B, H, N, N)
    np.testing.assert_allclose(to_numpy(att).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(att), att_t.detach().cpu().numpy(), rtol=1e-10)


def test_float32_scores_stay_float32():
    layer = make(12, 3).astype(np.float32)
    y = layer.forward(np.ones((1, 4, 12), np.float32))
    att = layer.att
    assert y.dtype == att.dtype == np.float32


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match=r"\(B, N, 12\)"):
        make(12, 3).forward(np.zeros((5, 12)))
    with pytest.raises(ValueError, match=r"\(B, N, 12\)"):
        make(12, 3).forward(np.zeros((2, 5, 10)))
