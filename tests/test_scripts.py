"""evaluate.py, predict.py, plot.py and attention.py on a checkpoint trained by the tests."""
import os
import subprocess
import sys

import numpy as np
import pytest

from npvit.inference import confusion_matrix, topk
from npvit.visualize import attention_rollout, cls_attention
from tests.cifar_fixtures import REPO, write_fake_cifar


def script(name, *args, check=True):
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)], capture_output=True,
                       text=True, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"{name} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = str(write_fake_cifar(tmp_path_factory.mktemp("data"), n_per_batch=64))
    out = tmp_path_factory.mktemp("run")
    script("train.py", "--data-dir", data, "--out-dir", out, "--epochs", "2", "--batch-size", "64",
           "--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
           "--num-hidden-layers", "2", "--no-progress")
    return data, out


def test_evaluate(trained, tmp_path):
    data, out = trained
    p = script("evaluate.py", out / "best.npz", "--data-dir", data, "--json", tmp_path / "r.json")
    assert "test accuracy:" in p.stdout and "confusion matrix" in p.stdout and "airplane" in p.stdout
    import json
    r = json.loads((tmp_path / "r.json").read_text())
    assert np.array(r["confusion"]).sum() == 64 and len(r["per_class"]) == 10


def test_predict(trained, tmp_path):
    from PIL import Image

    data, out = trained
    img = tmp_path / "cat.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(img)
    lines = script("predict.py", out / "best.npz", img).stdout.strip().splitlines()
    assert len(lines) == 5
    probs = [float(line.split()[-1].rstrip("%")) for line in lines]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01
    p = script("predict.py", out / "best.npz", tmp_path / "none.png", check=False)
    assert p.returncode == 2 and "no image at" in p.stderr


def test_plot_and_attention_write_pngs(trained, tmp_path):
    data, out = trained
    script("plot.py", out, "-o", tmp_path / "curves.png")
    script("attention.py", out / "best.npz", "--data-dir", data, "-n", "4", "-o", tmp_path / "att.png")
    for name in ("curves.png", "att.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = script("plot.py", tmp_path / "nothing", check=False)
    assert p.returncode == 2 and "no metrics file" in p.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    p = script("evaluate.py", tmp_path / "nope.npz", check=False)
    assert p.returncode == 2 and "no checkpoint at" in p.stderr


def test_attention_maps_math():
    rng = np.random.default_rng(0)
    atts = []
    for _ in range(3):
        a = rng.random((2, 4, 17, 17))
        atts.append(a / a.sum(-1, keepdims=True))
    m = cls_attention(atts)
    assert m.shape == (2, 4, 4)
    np.testing.assert_allclose(m[0, 0, 1], np.mean([a[0, :, 0, 2] for a in atts]))
    r = attention_rollout(atts)
    assert r.shape == (2, 4, 4) and (r > 0).all() and (r.sum(axis=(1, 2)) < 1).all()
    # one layer of uniform attention: rollout row 0 is (I + U) / 2 restricted to the patches
    u = [np.full((1, 1, 5, 5), 0.2)]
    np.testing.assert_allclose(attention_rollout(u), np.full((1, 2, 2), 0.1))


def test_confusion_and_topk():
    cm = confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    assert topk(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], 2) == [("b", 0.6), ("c", 0.3)]


def test_the_npvit_command_runs_every_program(trained, tmp_path):
    """python -m npvit <command> (the same as the installed `npvit` console script) and its errors."""
    data, out = trained

    def npvit(*args):
        return subprocess.run([sys.executable, "-m", "npvit", *map(str, args)], capture_output=True, text=True,
                              cwd=REPO)

    p = npvit("--help")
    assert p.returncode == 0 and all(c in p.stdout for c in ("train", "evaluate", "predict", "plot", "attention",
                                                              "export", "gradcheck"))
    p = npvit()
    assert p.returncode == 2 and "usage: npvit <command>" in p.stderr
    p = npvit("tarin")
    assert p.returncode == 2 and "unknown command 'tarin'" in p.stderr
    p = npvit("evaluate", out / "best.npz", "--data-dir", data)
    assert p.returncode == 0 and "test accuracy:" in p.stdout, p.stderr
    p = npvit("train", "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: npvit train")
    p = npvit("export", out / "best.npz", tmp_path / "m.safetensors")
    assert p.returncode == 0 and (tmp_path / "m.safetensors").is_file(), p.stderr
    p = npvit("predict", out / "best.npz", tmp_path / "none.png")
    assert p.returncode == 2 and p.stderr.strip() == f"error: no image at {tmp_path / 'none.png'}"


def test_the_console_script_is_declared():
    import importlib

    tomllib = pytest.importorskip("tomllib")     # Python 3.11+

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["npvit"]
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_flip_test_time_augmentation(trained):
    """log of the mean of the probabilities of an image and its mirror; a mirror-symmetric image is unchanged."""
    from npvit import ViT
    from npvit.inference import predict_logits
    from npvit.config import ViTConfig
    from npvit.losses import log_softmax

    model = ViT(ViTConfig.tiny(), dtype="float64", seed=1).eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8))
    p = np.exp(log_softmax(model(x))) + np.exp(log_softmax(model(np.ascontiguousarray(x[..., ::-1]))))
    np.testing.assert_allclose(predict_logits(model, x, tta_flip=True), np.log(p / 2), rtol=1e-12)
    sym = x + x[..., ::-1]
    np.testing.assert_allclose(predict_logits(model, sym, tta_flip=True), log_softmax(model(sym)), rtol=1e-12,
                               atol=1e-12)
    data, out = trained
    r = script("evaluate.py", out / "best.npz", "--data-dir", data, "--tta-flip")
    assert "test accuracy:" in r.stdout
