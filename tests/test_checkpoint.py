import numpy as np
import pytest

from npvit import ViT
from npvit.checkpoint import load_checkpoint, save_checkpoint
from npvit.errors import CheckpointError
from npvit.config import ViTConfig
from npvit.optim import AdamW


def test_round_trip_is_exact(tmp_path):
    model = ViT({**ViTConfig.tiny().to_dict(), "final_layernorm": True}, seed=4)
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


# -- checkpoints that say what they are ------------------------------------------------------------------------------
def altered(tmp_path, meta_change=None, array_change=None):
    """A real checkpoint of a model and AdamW, rewritten with its meta.json or one array changed."""
    import json
    from npvit import softmax_cross_entropy
    model = ViT(ViTConfig.tiny(), seed=1)
    opt = AdamW(model, lr=1e-3)
    model.backward(softmax_cross_entropy(model(np.ones((2, 3, 8, 8), np.float32)), np.array([0, 1]))[1])
    opt.step()                                      # so that it has moments
    path = save_checkpoint(tmp_path / "real.npz", model, opt)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta.json"]))
    if meta_change:
        meta_change(meta)
    arrays["meta.json"] = np.array(json.dumps(meta))
    if array_change:
        array_change(arrays)
    np.savez(tmp_path / "altered.npz", **arrays)
    return tmp_path / "altered.npz"


def float16_moments(arrays):
    for k in arrays:
        if k.startswith("optim/state.") and k.endswith(".exp_avg"):
            arrays[k] = arrays[k].astype(np.float16)


@pytest.mark.parametrize("meta_change,array_change,message", [
    (lambda m: m.update(format_version=2, npvit_version="0.9.0"), None,
     r"was written by npvit 0\.9\.0 in checkpoint format 2; this npvit \(0\.1\.0\) reads format 1: upgrade npvit"),
    (lambda m: m.update(format_version=7) or m.pop("npvit_version"), None, "written by a newer npvit in checkpoint format 7"),
    (lambda m: m.pop("format_version"), None, "says no checkpoint format"),
    (lambda m: m.update(format_version=0), None, "is in checkpoint format 0, older than any npvit wrote"),
    (None, float16_moments, r"optimiser state .*exp_avg is float16, but the optimiser's state must be float32 or wider"),
    (None, lambda a: a.update({"param/classifier.weight": a["param/classifier.weight"].astype(np.float64)}),
     "weight classifier.weight is float64, but the model is float32"),
    (None, lambda a: a.update({"optim/step_count": a["optim/step_count"].astype(np.float32)}),
     "step_count is float32, but a step counter is an integer"),
    (lambda m: m.update(dtype="bfloat16"), None, "names the model's dtype 'bfloat16'"),
], ids=["newer", "newer-unnamed", "no-version", "older", "float16-moments", "weight-dtype", "step-count",
        "odd-dtype"])
def test_a_checkpoint_not_as_npvit_writes_it_is_refused_in_one_line(tmp_path, meta_change, array_change, message):
    path = altered(tmp_path, meta_change, array_change)
    with pytest.raises(CheckpointError, match=message) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_a_checkpoint_names_the_npvit_that_wrote_it(tmp_path):
    import npvit
    _, _, meta = load_checkpoint(altered(tmp_path))
    assert meta["format_version"] == 1 and meta["npvit_version"] == npvit.__version__


def test_resuming_a_run_with_float16_moments_is_refused_in_one_line(tmp_path):
    """Through the command line, as a user meets it: one line, exit 2, the run's files untouched."""
    import os
    import subprocess
    import sys
    from tests.cifar_fixtures import REPO, write_fake_cifar
    data, out = str(write_fake_cifar(tmp_path / "data", n_per_batch=32)), tmp_path / "run"
    small = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48", "--num-hidden-layers",
             "2", "--no-progress", "--threads", "1", "--batch-size", "32"]
    train = [sys.executable, os.path.join(REPO, "scripts", "train.py")]
    assert subprocess.run([*train, "--data-dir", data, "--out-dir", out, "--epochs", "1", *small]).returncode == 0
    with np.load(out / "latest.npz") as z:
        arrays = {k: z[k] for k in z.files}
    float16_moments(arrays)
    np.savez(out / "latest.npz", **arrays)
    before = (out / "latest.npz").read_bytes()
    p = subprocess.run([*train, "--resume", str(out), "--epochs", "2"], capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "is float16, but the optimiser's state must be float32" in lines[0]
    assert (out / "latest.npz").read_bytes() == before
