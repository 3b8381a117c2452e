import numpy as np
import pytest

from npvit import ViT
from npvit.checkpoint import load_checkpoint, save_checkpoint
from npvit.errors import CheckpointError
from npvit.gradcheck import small_vit_config
from npvit.optim import AdamW


def test_round_trip_is_exact(tmp_path):
    model = ViT({**small_vit_config().to_dict(), "final_layernorm": True}, seed=4)
    opt = AdamW(model, lr=1e-3)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    from npvit import softmax_cross_entropy
    _, d = softmax_cross_entropy(model(x), np.array([0, 1]))
    model.backward(d)
    opt.step()
    path = save_checkpoint(tmp_path / "ckpt.npz", model, opt, meta={"epoch": 7})
    loaded, optim_state, meta = load_checkpoint(path)
    assert loaded.config == model.config and loaded.dtype == np.float32 and meta["epoch"] == 7
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    np.testing.assert_array_equal(loaded(x), model(x))
    opt2 = AdamW(loaded, lr=1e-3).load_state_dict(optim_state)
    assert opt2.step_count == 1
    assert set(opt2.state) == {"exp_avg", "exp_avg_sq"}
    for slot, flat in opt.state.items():
        np.testing.assert_array_equal(opt2.state[slot], flat)
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npvit checkpoint"):
        load_checkpoint(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="not an npvit checkpoint"):
        load_checkpoint(other)
