import numpy as np
import pytest

from npvit.backend import to_numpy
from npvit.gradcheck import check_layer_gradients
from npvit.layers import MLP, Block, Encoder
from tests.tolerances import GRADCHECK_TOL
from tests.helpers import compare_with_torch, to_device
from reference import article_vit as ref


def cfg(D, H, I, L=2):
    return dict(hidden_size=D, num_attention_heads=H, intermediate_size=I, num_hidden_layers=L, qkv_bias=True,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


SHAPES = [(2, 5, 12, 3, 20), (2, 17, 48, 4, 192), (1, 10, 36, 6, 50)]  # (B, N, D, H, I)
init = dict(std=0.3)


def randomise_norms(layer, seed=2):
    """LayerNorm weight 1 / bias 0 would hide gradient bugs that multiply by them."""
    rng = np.random.default_rng(seed)
    for name, p in layer.parameters().items():
        if "layernorm" in name:
            p[...] = (1.0 if name.endswith("weight") else 0.0) + 0.3 * rng.standard_normal(p.shape)
    return layer


@pytest.mark.parametrize("B,N,D,H,I", SHAPES)
def test_gradcheck(B, N, D, H, I, xp):
    x = to_device(np.random.default_rng(0).standard_normal((B, N, D)), xp)
    rng = np.random.default_rng(1)
    check_layer_gradients(MLP(D, I, rng=rng, **init).to(xp), x).assert_ok(GRADCHECK_TOL)
    check_layer_gradients(randomise_norms(Block(D, H, I, rng=rng, **init)).to(xp), x).assert_ok(GRADCHECK_TOL)
    check_layer_gradients(randomise_norms(Encoder(2, D, H, I, rng=rng, **init)).to(xp), x).assert_ok(GRADCHECK_TOL)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("B,N,D,H,I", SHAPES)
def test_matches_article_modules(B, N, D, H, I, dtype, backend):
    x = np.random.default_rng(0).standard_normal((B, N, D))
    rng = np.random.default_rng(1)
    compare_with_torch(MLP(D, I, rng=rng, **init), ref.MLP(cfg(D, H, I)), x, dtype, backend)
    compare_with_torch(randomise_norms(Block(D, H, I, rng=rng, **init)), ref.Block(cfg(D, H, I)), x, dtype, backend)
    compare_with_torch(randomise_norms(Encoder(2, D, H, I, rng=rng, **init)), ref.Encoder(cfg(D, H, I)), x, dtype,
                       backend)


def test_each_block_keeps_its_attention_map():
    enc = Encoder(3, 12, 3, 20)
    y = enc.forward(np.random.default_rng(0).standard_normal((2, 5, 12)))
    atts = [block.attention.att for block in enc.blocks]
    assert y.shape == (2, 5, 12) and len(atts) == 3 and all(a.shape == (2, 3, 5, 5) for a in atts)
    np.testing.assert_allclose(atts[1].sum(-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("B,N,D,H,I", SHAPES)
def test_cls_only_is_token_0_of_the_full_block(B, N, D, H, I, xp):
    """The ViT's last block computes the [CLS] row only: the full block's row 0, and the full block's dx and
    gradients when the gradient reaches token 0 alone; it passes the gradient check on its own."""
    import copy

    from tests.helpers import rel_err

    x = to_device(np.random.default_rng(0).standard_normal((B, N, D)), xp)
    full = randomise_norms(Block(D, H, I, rng=np.random.default_rng(1), **init)).astype(np.float64).to(xp)
    part = copy.deepcopy(full)
    y, y0 = full.forward(x), part.forward(x, cls_only=True)
    assert y0.shape == (B, 1, D) and rel_err(to_numpy(y0), to_numpy(y[:, :1])) < 1e-12
    dy0 = to_device(np.random.default_rng(2).standard_normal((B, 1, D)), xp)
    dy = xp.zeros((B, N, D))
    dy[:, :1] = dy0
    dx, dx0 = full.backward(dy), part.backward(dy0)
    assert rel_err(to_numpy(dx0), to_numpy(dx)) < 1e-12
    for k, g in full.gradients().items():
        assert rel_err(to_numpy(part.gradients()[k]), to_numpy(g)) < 1e-12, k
    check_layer_gradients(part, x, forward_kwargs={"cls_only": True}).assert_ok(GRADCHECK_TOL)
    enc = randomise_norms(Encoder(2, D, H, I, rng=np.random.default_rng(3), **init)).to(xp)
    check_layer_gradients(enc, x, forward_kwargs={"cls_only": True}).assert_ok(GRADCHECK_TOL)


def test_num_queries_out_of_range_is_a_clear_error():
    from npvit.layers import MultiHeadSelfAttention

    with pytest.raises(ValueError, match=r"num_queries must be in 1..5"):
        MultiHeadSelfAttention(12, 3).forward(np.zeros((2, 5, 12)), num_queries=0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_drop_path_block_matches_pytorch_with_the_same_masks(dtype, backend):
    """Block with stochastic depth: y = x1 + m2 mlp(ln2(x1)), x1 = x + m1 attn(ln1(x)), m per sample;
    the masks our forward drew, applied to the article's modules in torch: forward, dx, every gradient."""
    import torch

    B, N, D, H, I = 16, 5, 12, 3, 20
    x = np.random.default_rng(0).standard_normal((B, N, D))
    block = randomise_norms(Block(D, H, I, rng=np.random.default_rng(1), drop_path=0.5, **init)).reseed(4)
    module = ref.Block(cfg(D, H, I))

    def torch_forward(xt):
        m1, m2 = (torch.tensor(to_numpy(d.mask), dtype=xt.dtype, device=xt.device)
                  for d in (block.drop_path_1, block.drop_path_2))
        for m in (m1, m2):                                       # some images kept, some dropped
            assert 0 < int((m != 0).sum()) < B
        a, _ = module.attention(module.layernorm_1(xt))
        x1 = xt + m1 * a
        return x1 + m2 * module.mlp(module.layernorm_2(x1))

    compare_with_torch(block, module, x, dtype, backend, torch_forward=torch_forward)


def test_drop_path_rates_rise_with_depth_and_rate_0_adds_no_layers():
    enc = Encoder(4, 12, 3, 20, drop_path_rate=0.3)
    assert [b.drop_path_1 is None for b in enc.blocks] == [True, False, False, False]
    np.testing.assert_allclose([b.drop_path_2.p for b in enc.blocks[1:]], [0.1, 0.2, 0.3])
    plain = [name for name, _ in Encoder(4, 12, 3, 20).named_layers()]
    assert not [name for name in plain if "drop_path" in name]  # the tree (and every dropout seed) as before
    enc.eval()
    x = np.random.default_rng(0).standard_normal((2, 5, 12))
    same = Encoder(4, 12, 3, 20, rng=np.random.default_rng(5))
    enc = Encoder(4, 12, 3, 20, rng=np.random.default_rng(5), drop_path_rate=0.3).eval()
    np.testing.assert_array_equal(enc.forward(x), same.forward(x))   # eval mode: the plain encoder
