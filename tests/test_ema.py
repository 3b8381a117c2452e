"""The moving average of the weights (npvit/ema.py, --ema): its formula, its swap into the model, its place in
checkpoints, and that evaluate/export/--init-from take it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npvit import ViT
from npvit.checkpoint import load_checkpoint, read_checkpoint
from npvit.ema import EMA
from npvit.config import ViTConfig
from npvit.optim import SGD
from npvit.parallel import DataParallel
from npvit.errors import ConfigError
from npvit.training.settings import build_config
from tests.cifar_fixtures import REPO, write_fake_cifar

TRAIN = [sys.executable, os.path.join(REPO, "scripts", "train.py")]
SMALL = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
         "--num-hidden-layers", "2", "--no-progress", "--batch-size", "64", "--schedule", "constant",
         "--warmup-epochs", "0"]


def sgd_steps(model, opt, ema, rng, steps):
    """A few real optimiser steps on random data; returns the named weights after each."""
    seen = []
    for _ in range(steps):
        x = rng.standard_normal((6, 3, 8, 8))
        model.zero_grad()
        logits = model(x)
        model.backward(0.1 * rng.standard_normal(logits.shape))
        opt.step()
        ema.update()
        seen.append({k: v.copy() for k, v in model.parameters().items()})
        assert all(np.isfinite(v).all() for v in seen[-1].values())
    return seen


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_average_follows_the_formula(decay):
    """a_t = d_t a_{t-1} + (1 - d_t) p_t with d_t = min(decay, (1+t)/(10+t)), a_0 = p_0, per named array."""
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=0)
    opt = SGD(model, lr=0.05, momentum=0.9)
    ema = EMA(model, decay)
    a = {k: v.copy() for k, v in model.parameters().items()}
    weights = sgd_steps(model, opt, ema, np.random.default_rng(1), 25)
    for t, p in enumerate(weights, start=1):
        d = min(decay, (1 + t) / (10 + t))
        a = {k: d * a[k] + (1 - d) * p[k] for k in a}
    got = ema.averaged_params()
    for k in a:
        np.testing.assert_allclose(got[k], a[k], rtol=1e-12, atol=1e-15, err_msg=k)
        assert not np.allclose(got[k], weights[-1][k]), f"{k}: the average is just the last weights"


def test_applied_swaps_in_the_average_for_every_thread_and_restores():
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=0)
    opt = SGD(model, lr=0.1)
    ema = EMA(model, 0.8)
    sgd_steps(model, opt, ema, np.random.default_rng(2), 5)
    raw = model.state_dict()
    x = np.random.default_rng(3).standard_normal((8, 3, 8, 8))
    plain = ViT(ViTConfig.tiny(), dtype="float64", seed=9)
    plain.load_state_dict(ema.averaged_params())
    net = DataParallel(model.eval(), threads=2)          # replicas on two threads share the weights
    with ema.applied():
        np.testing.assert_allclose(net(x), plain.eval()(x), rtol=1e-12, atol=1e-13)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, raw[k], err_msg=k)
    with pytest.raises(KeyError):                         # an error inside the block restores the weights too
        with ema.applied():
            raise KeyError("x")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, raw[k], err_msg=k)
    opt.step()                                            # the optimiser still updates the model's own buffer
    assert not np.array_equal(model.state_dict()["classifier.weight"], raw["classifier.weight"])


def test_load_continues_and_refuses_misfits():
    model = ViT(ViTConfig.tiny(), dtype="float64", seed=0)
    ema = EMA(model, 0.9)
    saved = {k: v + 1.0 for k, v in model.state_dict().items()}
    ema.load(saved, 7)
    assert ema.updates == 7 and ema.rate() == pytest.approx(min(0.9, 9 / 18))
    np.testing.assert_array_equal(ema.averaged_params()["classifier.bias"], saved["classifier.bias"])
    with pytest.raises(ValueError, match="missing"):
        ema.load({k: v for k, v in saved.items() if k != "classifier.bias"}, 1)
    with pytest.raises(ValueError, match="shape"):
        ema.load({**saved, "classifier.bias": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.0)


def test_config_rules():
    assert build_config(overrides={"ema": 0.999}).ema == 0.999
    assert build_config(recipe="sprint").ema == 0.0 and build_config(recipe="article").ema == 0.0
    assert build_config(recipe="full").ema == 0.999
    with pytest.raises(ConfigError, match="ema must be a number in"):
        build_config(overrides={"ema": 1.0})
    with pytest.raises(ConfigError, match="needs --ema"):
        build_config(recipe="sprint", overrides={"eval_raw": True})


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    data = str(write_fake_cifar(tmp_path_factory.mktemp("data"), n_per_batch=64))
    out = str(tmp_path_factory.mktemp("run"))
    subprocess.run(TRAIN + ["--data-dir", data, "--out-dir", out, "--epochs", "2", "--eval-every", "1", "--ema", "0.9", "--eval-raw",
                            "--threads", "2"] + SMALL, check=True, capture_output=True, cwd=REPO)
    return data, out


def test_a_run_evaluates_and_saves_the_average(ema_run, tmp_path):
    data, out = ema_run
    m = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert all(r["test_loss"] != r["raw_test_loss"] for r in m), m          # two different weights evaluated
    ckpt = read_checkpoint(os.path.join(out, "latest.npz"))
    params, meta, averaged = ckpt.params, ckpt.meta, ckpt.averaged
    assert set(averaged) == set(params) and meta["train"]["ema_updates"] == 10      # 2 epochs x 5 steps
    assert any(not np.array_equal(averaged[k], params[k]) for k in params)
    # evaluate.py uses the average: its accuracy is the run's last test_acc (fake data: 64 test images)
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), os.path.join(out, "latest.npz"),
                        "--data-dir", data, "--json", str(tmp_path / "r.json")], capture_output=True, text=True,
                       cwd=REPO, check=True)
    assert json.loads((tmp_path / "r.json").read_text())["accuracy"] == pytest.approx(m[-1]["test_acc"], abs=1e-12)
    model = load_checkpoint(os.path.join(out, "latest.npz"), averaged=True)[0]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, averaged[k], err_msg=k)
    raw = load_checkpoint(os.path.join(out, "latest.npz"))[0]
    for k, v in raw.state_dict().items():
        np.testing.assert_array_equal(v, params[k], err_msg=k)
    del r


def test_resume_continues_the_average_exactly(ema_run, tmp_path):
    """2 epochs, then 1 more on resume (branched into another directory) = 3 epochs in one go (constant lr)."""
    data, out = ema_run
    branch, full = str(tmp_path / "branch"), str(tmp_path / "full")
    subprocess.run(TRAIN + ["--resume", out, "--out-dir", branch, "--epochs", "3"], check=True, capture_output=True,
                   cwd=REPO)
    subprocess.run(TRAIN + ["--data-dir", data, "--out-dir", full, "--epochs", "3", "--ema", "0.9", "--eval-raw",
                            "--threads", "2"] + SMALL, check=True, capture_output=True, cwd=REPO)
    branched = read_checkpoint(os.path.join(branch, "latest.npz"))
    meta, resumed = branched.meta, branched.averaged
    uninterrupted = read_checkpoint(os.path.join(full, "latest.npz")).averaged
    assert meta["train"]["ema_updates"] == 15
    for k in uninterrupted:
        np.testing.assert_array_equal(resumed[k], uninterrupted[k], err_msg=k)


def test_init_from_and_export_take_the_average(ema_run, tmp_path):
    from npvit.checkpoint import export_safetensors, read_safetensors
    from npvit.training.runstate import init_weights

    data, out = ema_run
    latest = os.path.join(out, "latest.npz")
    averaged = read_checkpoint(latest).averaged
    cfg = json.load(open(os.path.join(out, "config.json")))
    started = init_weights(latest, ViTConfig.from_dict({k: cfg[k] for k in ViTConfig.keys()}))
    exported = read_safetensors(export_safetensors(latest, str(tmp_path / "m.safetensors")))[1]
    for k in averaged:
        np.testing.assert_array_equal(started[k], averaged[k], err_msg=k)
        np.testing.assert_array_equal(exported[k], averaged[k], err_msg=k)


def test_the_average_of_an_init_from_run_starts_at_its_weights(ema_run, tmp_path):
    """--init-from X --ema: the average starts at X's weights, not at the random ones they replaced."""
    data, out = ema_run
    latest = os.path.join(out, "latest.npz")
    start = read_checkpoint(latest).averaged                   # what --init-from takes: the average
    init = str(tmp_path / "init")
    subprocess.run(TRAIN + ["--data-dir", data, "--out-dir", init, "--epochs", "1", "--lr", "1e-12",
                            "--weight-decay", "0", "--ema", "0.9", "--init-from", latest] + SMALL, check=True,
                   capture_output=True, cwd=REPO)
    averaged = read_checkpoint(os.path.join(init, "latest.npz")).averaged
    for k in start:
        np.testing.assert_allclose(averaged[k], start[k], rtol=0, atol=1e-7, err_msg=k)
