"""Weights go to the article's PyTorch code and come back through .safetensors, with no pickle on either side."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("safetensors")
import safetensors.torch  # noqa: E402

from npvit import ViT, ViTConfig  # noqa: E402
from npvit.checkpoint import export_safetensors, load_checkpoint, load_safetensors, save_checkpoint  # noqa: E402
from npvit.errors import CheckpointError  # noqa: E402
from tests.cifar_fixtures import REPO, write_fake_cifar  # noqa: E402
from tests.helpers import rel_err  # noqa: E402
from tests.reference.article_vit import ViTForClassfication  # noqa: E402

CONFIG = {**ViTConfig().to_dict(), "hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 40,
          "num_hidden_layers": 2}
X = np.random.default_rng(0).standard_normal((3, 3, 32, 32))


def torch_logits(model, x):
    with torch.no_grad():
        return model(torch.tensor(x))[0].numpy()


def test_npvit_to_the_articles_pytorch_model(tmp_path):
    model = ViT(CONFIG, dtype="float64", seed=3)
    ckpt = save_checkpoint(tmp_path / "m.npz", model, meta={"classes": list("abcdefghij"), "mean": [0.5] * 3,
                                                           "std": [0.5] * 3})
    st = export_safetensors(ckpt, tmp_path / "m.safetensors")
    theirs = ViTForClassfication(CONFIG).double().eval()
    theirs.load_state_dict(safetensors.torch.load_file(st), strict=True)
    assert rel_err(model.eval()(X), torch_logits(theirs, X)) < 1e-12
    # and the file alone rebuilds the npvit model, config and class names included
    back, _, meta = load_checkpoint(st)
    assert back.config == model.config and meta["classes"] == list("abcdefghij")
    assert rel_err(back.eval()(X.astype(np.float64)), model(X)) < 1e-12


def test_the_articles_pytorch_model_to_npvit(tmp_path):
    torch.manual_seed(0)
    theirs = ViTForClassfication(CONFIG).double().eval()
    path = str(tmp_path / "torch.safetensors")
    safetensors.torch.save_file(theirs.state_dict(), path)
    ours = load_safetensors(path, config=CONFIG, dtype="float64").eval()
    assert rel_err(ours(X), torch_logits(theirs, X)) < 1e-12
    with pytest.raises(CheckpointError, match="carries no npvit config"):
        load_safetensors(path)
    with pytest.raises(CheckpointError, match="missing keys|shape mismatch"):
        load_safetensors(path, config={**CONFIG, "hidden_size": 48, "num_attention_heads": 4})


def test_export_script_and_init_from(tmp_path):
    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=32))
    small = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "40",
             "--num-hidden-layers", "2", "--no-progress", "--threads", "1", "--batch-size", "32"]

    def script(name, *args):
        return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                              capture_output=True, text=True, cwd=REPO)

    p = script("train.py", "--data-dir", data, "--out-dir", tmp_path / "a", "--epochs", "1", *small)
    assert p.returncode == 0, p.stderr
    st = tmp_path / "a.safetensors"
    p = script("export.py", tmp_path / "a" / "best.npz", st)
    assert p.returncode == 0 and st.is_file(), p.stderr
    p = script("evaluate.py", st, "--data-dir", data)
    assert p.returncode == 0 and "test accuracy" in p.stdout, p.stderr
    # a new run from those weights: with a vanishing learning rate it ends where it began
    p = script("train.py", "--data-dir", data, "--out-dir", tmp_path / "b", "--epochs", "1", "--lr", "1e-12",
               "--init-from", st, *small)
    assert p.returncode == 0, p.stderr
    start = load_checkpoint(st)[0].state_dict()
    end = load_checkpoint(tmp_path / "b" / "latest.npz")[0].state_dict()
    for k in start:
        np.testing.assert_allclose(end[k], start[k], atol=1e-6, err_msg=k)
    # a file of another model is refused in one line
    p = script("train.py", "--data-dir", data, "--out-dir", tmp_path / "c", "--epochs", "1", "--init-from", st,
               "--no-progress", "--threads", "1")
    assert p.returncode == 2 and "is for another model" in p.stderr and "Traceback" not in p.stderr
    p = script("export.py", tmp_path / "a" / "best.npz", tmp_path / "x.bin")
    assert p.returncode == 2 and "must end in .safetensors" in p.stderr
