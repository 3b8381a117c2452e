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
from reference.article_vit import ViTForClassfication  # noqa: E402

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
    with pytest.raises(CheckpointError, match="carries no model config"):
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


def script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO)


def one_error_line(p, *needles):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stdout + p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_weights_saved_by_pytorch_come_in_from_the_command_line(tmp_path):
    """safetensors.torch.save_file(model.state_dict()) of the article's model: evaluate, predict, attention, export
    and --init-from take it with the model's config given by flags or --config; without it, one line says so."""
    import json
    from PIL import Image

    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=32))
    torch.manual_seed(0)
    theirs = ViTForClassfication(CONFIG).eval()
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(theirs.state_dict(), str(path))
    flags = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "40", "--num-hidden-layers", "2"]
    (tmp_path / "model.json").write_text(json.dumps({k: CONFIG[k] for k in ("hidden_size", "num_attention_heads",
                                                                            "intermediate_size", "num_hidden_layers")}))
    one_error_line(script("evaluate.py", path, "--data-dir", data), "carries no model config", "--config FILE")
    for config in (flags, ["--config", tmp_path / "model.json"]):
        p = script("evaluate.py", path, "--data-dir", data, *config)
        assert p.returncode == 0 and "test accuracy" in p.stdout, p.stderr
        assert "using the article's normalisation (x - 0.5) / 0.5 and CIFAR-10's class names" in p.stderr
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    p = script("predict.py", path, tmp_path / "x.png", *flags)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 5, p.stderr
    # its logits are the PyTorch model's
    ours = load_safetensors(str(path), config=CONFIG).eval()
    assert rel_err(ours(X.astype(np.float32)), torch_logits(theirs, X.astype(np.float32))) < 1e-5
    p = script("export.py", path, tmp_path / "again.safetensors", *flags)
    assert p.returncode == 0, p.stderr
    p = script("train.py", "--data-dir", data, "--out-dir", tmp_path / "ft", "--epochs", "1", "--init-from", path,
               "--recipe", "article", "--no-progress", "--threads", "1", "--batch-size", "32", *flags)
    assert p.returncode == 0, p.stderr
    # the default recipe's model has a final LayerNorm that the article's lacks: named, in one line
    one_error_line(script("train.py", "--data-dir", data, "--out-dir", tmp_path / "ft2", "--epochs", "1", "--init-from",
                          path, *flags), "missing keys ['layernorm.weight', 'layernorm.bias']")
    # the model flags must describe the file's model: one line naming the arrays that do not fit
    one_error_line(script("evaluate.py", path, "--data-dir", data, "--hidden-size", "48"), "cannot load state_dict",
                   "shape mismatch", "classifier.weight: expected (10, 48), got (10, 24)")


def test_weights_of_the_wrong_shape_are_one_line_everywhere(tmp_path):
    """A file whose arrays have other shapes, or lack one, or have one too many: named array by array."""
    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=32))
    small = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "40",
             "--num-hidden-layers", "2", "--no-progress", "--threads", "1", "--batch-size", "32"]
    assert script("train.py", "--data-dir", data, "--out-dir", tmp_path / "a", "--epochs", "1", *small).returncode == 0
    z = dict(np.load(tmp_path / "a" / "latest.npz"))                   # weights and their average (ema/)
    wrong = dict(z, **{f"{k}/classifier.weight": np.zeros((10, 7), np.float32) for k in ("param", "ema")})
    missing = {k: v for k, v in z.items() if not k.endswith("/classifier.bias")}
    extra = dict(z, **{f"{k}/classifier.extra": np.zeros(3, np.float32) for k in ("param", "ema")})
    for name, arrays, needle in (("wrong", wrong, "classifier.weight: expected (10, 24), got (10, 7)"),
                                 ("missing", missing, "missing keys ['classifier.bias']"),
                                 ("extra", extra, "unexpected keys ['classifier.extra']")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        np.savez(run_dir / "latest.npz", **arrays)
        ckpt = run_dir / "latest.npz"
        one_error_line(script("train.py", "--data-dir", data, "--out-dir", tmp_path / f"init-{name}", "--epochs", "1",
                              "--init-from", ckpt, *small), f"--init-from {ckpt}", needle)
        one_error_line(script("train.py", "--resume", run_dir), f"checkpoint {ckpt}", needle)
        one_error_line(script("evaluate.py", ckpt, "--data-dir", data), needle)
        one_error_line(script("export.py", ckpt, tmp_path / f"{name}.safetensors"), needle)
