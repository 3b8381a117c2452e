"""The weights that ship with npvit (npvit/weights/vit-cifar10.safetensors): predict and attention use them when
no checkpoint is given, and say so; evaluate on them gives the test accuracy their metadata (and the README's
model card) states, on the real test images where they are available."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npvit.inference import PRETRAINED, load_trained
from tests.cifar_fixtures import REPO


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


def test_the_shipped_weights_are_in_the_package_with_their_card():
    assert os.path.isfile(PRETRAINED), PRETRAINED
    assert os.path.getsize(PRETRAINED) < 2 ** 20
    model, meta = load_trained(PRETRAINED)
    assert model.num_parameters() < 125_000
    assert meta["recipe"] == "full" and isinstance(meta["seed"], int) and 0.79 < meta["test_acc"] < 0.9
    assert meta["classes"][0] == "airplane" and len(meta["mean"]) == 3


def test_predict_and_attention_use_them_when_no_checkpoint_is_given(tmp_path):
    from PIL import Image

    sample = np.load(os.path.join(REPO, "notebooks", "cifar10_sample.npz"))
    Image.fromarray(sample["x"][0].transpose(1, 2, 0)).save(tmp_path / "img.png")
    p = script("predict.py", tmp_path / "img.png", "-k", "3")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3, p.stderr
    assert "no checkpoint given: using the weights that ship with npvit (recipe full, seed" in p.stderr
    assert PRETRAINED in p.stderr
    Image.fromarray(sample["x"][1].transpose(1, 2, 0)).save(tmp_path / "img2.png")
    p = script("predict.py", tmp_path / "img.png", tmp_path / "img2.png", "-k", "2")     # several images
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"{tmp_path / 'img.png'}:" and p.stdout.splitlines()[3] == \
        f"{tmp_path / 'img2.png'}:" and len(p.stdout.splitlines()) == 6, p.stdout
    one = script("predict.py", PRETRAINED, tmp_path / "img2.png", "-k", "2").stdout.splitlines()
    assert [line.strip() for line in p.stdout.splitlines()[4:]] == [line.strip() for line in one]
    p = script("predict.py", "a.npz", "b.png", "c.npz")
    assert p.returncode == 2 and "c.npz is a checkpoint among the images: give one checkpoint, first" in p.stderr
    p = script("predict.py", "a.npz")
    assert p.returncode == 2 and "no image given after the checkpoint a.npz" in p.stderr
    p = script("predict.py", tmp_path)                  # a folder of images, not a model directory
    assert p.returncode == 2 and f"{tmp_path} is a folder, neither a model directory (it has no config.json) nor " \
        f"an image: name the image files in it, e.g. {tmp_path / '*.png'}" in p.stderr, p.stderr


def test_evaluate_on_them_gives_the_stated_accuracy(real_data):
    meta = load_trained(PRETRAINED)[1]
    p = script("evaluate.py", PRETRAINED, "--data-dir", real_data, "--json", os.path.join(real_data, "..", "r.json"))
    assert p.returncode == 0, p.stderr
    got = json.load(open(os.path.join(real_data, "..", "r.json")))["accuracy"]
    assert got == pytest.approx(meta["test_acc"], abs=5e-4), (got, meta["test_acc"])


# -- a damaged copy in an installed package is refused, in one line that says to reinstall --------------------------
def test_the_recorded_sha256_is_that_of_each_shipped_file():
    from npvit.checkpoint import SHIPPED_CLS, sha256_of
    for path in (PRETRAINED, SHIPPED_CLS):
        recorded, name = open(path + ".sha256").read().split()
        assert name == os.path.basename(path) and recorded == sha256_of(path)


def installed_copy(tmp_path):
    """The npvit package copied as pip would install it, in a folder to put on PYTHONPATH."""
    import shutil
    site = tmp_path / "site"
    shutil.copytree(os.path.join(REPO, "npvit"), site / "npvit", ignore=shutil.ignore_patterns("__pycache__"))
    return site, site / "npvit" / "weights" / "vit-cifar10.safetensors"


def damage_finite(path):
    """20 KB in the middle of the weights overwritten with finite float32 values: no NaN for a check to see."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 & ~3
    data[start:start + 20 * 1024] = np.full(5 * 1024, 0.25, np.float32).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["finite-bytes", "missing", "unreadable", "nan"])
def test_damaged_shipped_weights_are_one_line_saying_to_reinstall(tmp_path, damage):
    from PIL import Image
    site, weights = installed_copy(tmp_path)
    if damage == "finite-bytes":
        damage_finite(weights)
    elif damage == "missing":
        weights.unlink()
    elif damage == "unreadable":
        weights.unlink()
        weights.mkdir()                                             # reads fail even as root
    else:
        data = bytearray(weights.read_bytes())
        data[-4:] = np.array([np.nan], np.float32).tobytes()
        weights.write_bytes(bytes(data))
    sample = np.load(os.path.join(REPO, "notebooks", "cifar10_sample.npz"))
    Image.fromarray(sample["x"][0].transpose(1, 2, 0)).save(tmp_path / "img.png")
    p = subprocess.run([sys.executable, "-m", "npvit", "predict", str(tmp_path / "img.png")], capture_output=True,
                       text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)})
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
    assert f"the weights that ship with npvit ({weights}) are damaged" in lines[0], lines[0]
    assert "reinstall npvit" in lines[0] and "diverged" not in lines[0] and "%" not in lines[0]
