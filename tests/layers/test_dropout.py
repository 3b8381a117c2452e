import numpy as np
import pytest

from npvit.backend import get_xp, to_numpy
from npvit.layers import DropPath, Dropout


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
