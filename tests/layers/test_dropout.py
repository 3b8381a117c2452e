import numpy as np
import pytest

from npvit.backend import get_xp, to_numpy
from npvit.layers import DropPath, Dropout, PatchDropout


def test_eval_mode_and_p0_are_identity():
    x = np.random.default_rng(0).standard_normal((4, 8))
    d = Dropout(0.5).eval()
    assert d.forward(x) is x and d.backward(x) is x
    assert Dropout(0.0).forward(x) is x


def test_train_mode_drops_and_rescales(backend):
    xp = get_xp(backend)
    x = xp.ones((200, 500), dtype=xp.float32)
    d = Dropout(0.25).reseed(3)
    y = to_numpy(d.forward(x))
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01                      # 100k draws: 0.01 is > 10 sigma
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)   # inverted dropout keeps E[y] = x
    dy = xp.full(x.shape, 2.0, dtype=xp.float32)
    np.testing.assert_array_equal(to_numpy(d.backward(dy)), 2.0 * y)  # dx = dy * mask


def test_same_seed_same_masks():
    x = np.ones((10, 10))
    a, b = Dropout(0.5).reseed(7), Dropout(0.5).reseed(7)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert not np.array_equal(a.forward(x), Dropout(0.5).reseed(8).forward(x))


@pytest.mark.parametrize("p", [-0.1, 1.0, float("nan"), "0.5"])
def test_bad_probability_is_a_clear_error(p):
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(p)


def test_drop_path_keeps_or_drops_each_sample_whole(backend):
    """Stochastic depth: one draw per sample; a kept sample is scaled by 1/(1-p), a dropped one is all zero."""
    xp = get_xp(backend)
    x = xp.ones((4000, 5, 6), dtype=xp.float32)
    d = DropPath(0.2).reseed(3)
    y = to_numpy(d.forward(x))
    assert y.dtype == np.float32 and d.mask.shape == (4000, 1, 1)
    per_sample = y.reshape(4000, -1)
    kept = per_sample[:, 0] != 0
    assert (per_sample == per_sample[:, :1]).all()               # whole samples, never single units
    assert abs(kept.mean() - 0.8) < 0.03                         # 4000 draws: 0.03 is > 4 sigma
    np.testing.assert_allclose(per_sample[kept], 1 / 0.8, rtol=1e-6)
    dy = xp.full(x.shape, 2.0, dtype=xp.float32)
    np.testing.assert_array_equal(to_numpy(d.backward(dy)), 2.0 * y)  # dx = dy * mask
    assert DropPath(0.2).eval().forward(x) is x and DropPath(0.0).forward(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        DropPath(1.0)


# -- PatchDropout -----------------------------------------------------------------------------------------
def test_patch_dropout_keeps_cls_and_a_random_share_of_each_images_patches(backend):
    xp = get_xp(backend)
    B, N, D = 6, 65, 4
    x = xp.asarray(np.arange(B * N * D, dtype=np.float32).reshape(B, N, D))
    layer = PatchDropout(0.25).reseed(1)
    y = to_numpy(layer.forward(x))
    assert y.shape == (B, 1 + 48, D) and y.dtype == np.float32
    x_host = to_numpy(x)
    np.testing.assert_array_equal(y[:, 0], x_host[:, 0])                 # [CLS] always first
    chosen = []
    for b in range(B):
        tokens = (y[b, 1:, 0] - x_host[b, 0, 0]) // D                    # which token each row is
        assert len(set(tokens)) == 48 and tokens.min() >= 1 and tokens.max() <= 64   # distinct patches
        np.testing.assert_array_equal(y[b, 1:], x_host[b, tokens.astype(int)])
        chosen.append(frozenset(tokens))
    assert len(set(chosen)) == B                                          # each image draws its own
    # backward is the adjoint of the gather: <y, r> = <x, backward(r)>, and dropped tokens get 0
    r = xp.asarray(np.random.default_rng(0).standard_normal(y.shape).astype(np.float32))
    dx = to_numpy(layer.backward(r))
    assert dx.shape == (B, N, D)
    assert float((to_numpy(r) * y).sum()) == pytest.approx(float((dx * x_host).sum()), rel=1e-6)
    for b in range(B):
        dropped = sorted(set(range(1, N)) - set(chosen[b]))
        assert not dx[b, dropped].any()


def test_patch_dropout_is_identity_in_eval_mode_and_at_zero():
    x = np.random.default_rng(0).standard_normal((2, 65, 4))
    assert PatchDropout(0.5).eval().forward(x) is x
    layer = PatchDropout(0.0)
    assert layer.forward(x) is x and layer.backward(x) is x
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\)"):
        PatchDropout(1.0)


def test_a_model_with_patch_dropout_passes_the_gradient_check():
    """The whole model in training mode, the same tokens chosen at every evaluation (reseeded)."""
    from npvit import ViT, softmax_cross_entropy
    from npvit.gradcheck import check_gradients
    from npvit.config import ViTConfig
    from tests.tolerances import GRADCHECK_TOL

    for pooling in ("cls", "mean"):
        model = ViT({**ViTConfig.tiny().to_dict(), "patch_dropout": 0.5, "pooling": pooling}, dtype="float64",
                    seed=0)
        rng = np.random.default_rng(1)
        x, y = rng.standard_normal((3, 3, 8, 8)), np.array([0, 1, 2])

        def loss_and_grad():
            model.reseed(5)
            loss, d = softmax_cross_entropy(model(x), y)
            return loss, d

        loss, d = loss_and_grad()
        assert model.patch_dropout.rows[1].shape == (3, 3)                # [CLS] and 2 of the 4 patches
        model.zero_grad()
        dx = model.backward(d)
        arrays = {"x": x, **model.parameters()}
        grads = {"x": dx, **{k: g.copy() for k, g in model.gradients().items()}}
        report = check_gradients(lambda: loss_and_grad()[0], arrays, grads, title=f"patch dropout, {pooling}")
        report.assert_ok(GRADCHECK_TOL)
        assert not dx[:, :, 0].all()                                      # some patches got no gradient
