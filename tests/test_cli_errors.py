"""Every user mistake in every script gets one error line (exit 2), never a traceback; broken pipes end quietly;
messages tell the truth. Each case is one the run-safety issue reproduced."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from npvit import ViT
from npvit.backend import cupy_available
from npvit.checkpoint import save_checkpoint
from tests.cifar_fixtures import REPO, write_fake_cifar

SMALL = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
         "--num-hidden-layers", "2", "--no-progress", "--threads", "1", "--batch-size", "64"]


def script(name, *args, **kw):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, **kw)


def one_error_line(p, *needles, status=2):
    """Exit ``status`` with one error line on stderr (after argparse's usage lines, for its own errors)."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == status, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in lines if line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1, p.stderr
    if not p.stderr.startswith("usage:"):
        assert lines == errors, p.stderr
    for needle in needles:
        assert needle in p.stderr, f"{needle!r} not in {p.stderr!r}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_fake_cifar(tmp_path_factory.mktemp("fake"), n_per_batch=64))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    p = script("train.py", "--data-dir", data, "--out-dir", out, "--epochs", "1", *SMALL)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def nan_checkpoint(trained, tmp_path_factory):
    """A checkpoint as a diverged run would have written it before npvit refused to."""
    from npvit.checkpoint import load_checkpoint

    model, _, meta = load_checkpoint(trained / "best.npz")
    model.parameters()["classifier.weight"][...] = np.nan
    model.parameters()["encoder.blocks.0.mlp.dense_1.bias"][0] = np.inf
    path = tmp_path_factory.mktemp("nan") / "nan.npz"
    save_checkpoint(path, model, meta=meta)
    return path


# -- train.py ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config,needle", [
    ({"out_dir": None}, "out_dir must be a non-empty path, got None"),
    ({"seed": "abc"}, "seed must be an integer in [0, 2**63), got 'abc'"),
    ({"betas": ["a", 0.5]}, "betas must be two numbers in [0, 1)"),
    ({"progress": "no"}, "progress must be true or false, got 'no'"),
    ({"download": "no"}, "download must be true or false, got 'no'"),
    ({"epochs": 2.5}, "epochs must be a positive integer"),
    ({"rrc_scale": [0.9, 0.1]}, "rrc_scale must be [low, high]"),
    ({"trivial_augment_prob": 0}, "trivial_augment_prob must be a number in (0, 1], got 0"),
    ({"trivial_augment_prob": 1.5}, "trivial_augment_prob must be a number in (0, 1], got 1.5"),
    ({"threads": 0}, "threads must be a positive integer or 'auto'"),
    ({"hidden_size": "48"}, "config hidden_size must be an int"),
    ([1, 2], "must hold a JSON object"),
])
def test_bad_config_values_are_one_line(tmp_path, data, config, needle):
    f = tmp_path / "c.json"
    f.write_text(json.dumps(config))
    out = [] if "out_dir" in config else ["--out-dir", tmp_path / "o"]      # a flag would override the file
    one_error_line(script("train.py", "--config", f, "--data-dir", data, *out), needle)
    assert not (tmp_path / "o").exists()


def test_bad_config_files_and_flags_are_one_line(tmp_path, data):
    f = tmp_path / "latin1.json"
    f.write_bytes('{"lr": 0.1, "note": "caf\xe9"}'.encode("latin-1"))
    one_error_line(script("train.py", "--config", f), "is not UTF-8 text")
    one_error_line(script("train.py", "--config", tmp_path), "is a directory")
    one_error_line(script("train.py", "--data-dir", data, "--seed", "-1", "--out-dir", tmp_path / "o"),
                   "seed must be an integer in [0, 2**63), got -1")


@pytest.mark.skipif(cupy_available(), reason="CuPy and a GPU are here: --backend cupy is no mistake")
def test_cupy_without_cupy_is_one_line(tmp_path, data):
    one_error_line(script("train.py", "--backend", "cupy", "--threads", "1", "--data-dir", data,
                          "--out-dir", tmp_path / "o"), "backend='cupy' needs")
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"backend": "cupy", "threads": 1}))
    one_error_line(script("train.py", "--config", f, "--data-dir", data, "--out-dir", tmp_path / "o"),
                   "backend='cupy' needs")
    one_error_line(script("evaluate.py", "x.npz", "--backend", "cupy", "--threads", "1"), "backend='cupy' needs")


def test_numba_kernels_on_the_gpu_backend_are_one_line(tmp_path, data):
    one_error_line(script("train.py", "--backend", "cupy", "--threads", "1", "--kernels", "numba", "--data-dir", data,
                          "--out-dir", tmp_path / "o"), "kernels='numba' are CPU loops for the numpy backend, not 'cupy'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "object_array", "not_json_meta"])
def test_resume_from_a_damaged_checkpoint_is_one_line(trained, tmp_path, damage):
    bad = tmp_path / "latest.npz"
    blob = (trained / "latest.npz").read_bytes()
    if damage == "truncated":
        bad.write_bytes(blob[: len(blob) // 2])
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "object_array":
        np.savez(bad, **{"config.json": np.array({"a": 1}, dtype=object), "meta.json": np.array("{}")})
    else:
        np.savez(bad, **{"config.json": np.array("{"), "meta.json": np.array("[]")})
    marker = tmp_path / "ran"
    one_error_line(script("train.py", "--resume", bad, "--out-dir", tmp_path / "o"), str(bad))
    assert not marker.exists()


def test_threads_above_the_cores_warn(data, trained):
    p = script("evaluate.py", trained / "best.npz", "--data-dir", data, "--threads", "64")
    assert p.returncode == 0 and "warning: --threads 64 is more than the" in p.stderr, p.stderr


def test_log_is_line_buffered_and_progress_is_plain_lines_in_files(data, tmp_path):
    """stdout to a pipe shows each line as it is printed; stderr (no terminal) gets no carriage returns."""
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", data,
                          "--out-dir", str(tmp_path / "o"), "--epochs", "3", "--progress"] + SMALL[:-5]
                         + ["--threads", "1", "--batch-size", "16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = p.stdout.readline()
    still_running = p.poll() is None
    out, err = p.communicate()
    assert first.startswith(("npvit:", "note:")) and still_running, "the first line came only at exit: block-buffered"
    assert p.returncode == 0 and "\r" not in err, err


def test_progress_lines_when_not_a_terminal(monkeypatch):
    import io

    from npvit.training import console

    monkeypatch.setattr(console, "PLAIN_PROGRESS_S", 0)
    stream = io.StringIO()
    bar = console.Progress(True, steps=20, start=0, epoch=0, epochs=3, stream=stream)
    for i in range(1, 21):
        bar.step()
        if i % 10 == 0:
            bar.show(i, 1.5, 0.25, 900.0, 1e-3)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "epoch 1/3 step 10/20 | loss 1.5000 acc 0.250 | 900 img/s | lr 1.00e-03",
        "epoch 1/3 step 20/20 | loss 1.5000 acc 0.250 | 900 img/s | lr 1.00e-03"]


def test_a_closed_stdout_stops_training_after_saving(data, tmp_path):
    """train.py | head: the run saves at the next step and ends quietly; --resume finishes it."""
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", data,
                          "--out-dir", str(out), "--epochs", "2"] + SMALL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    p.stdout.close()                      # the reader goes away before the first line
    err = p.stderr.read().decode()
    assert p.wait() == 1 and "Traceback" not in err, err
    assert (out / "latest.npz").is_file()
    r = script("train.py", "--resume", out)
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["epoch"] for line in open(out / "metrics.jsonl")] == [1, 2]


# -- evaluate.py, predict.py, attention.py, plot.py ----------------------------------------------------
@pytest.mark.parametrize("name,args", [
    ("evaluate.py", []), ("predict.py", ["IMAGE"]), ("attention.py", []),
])
def test_scripts_refuse_non_finite_weights_naming_the_arrays(nan_checkpoint, data, tmp_path, name, args):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    args = [img if a == "IMAGE" else a for a in args]
    extra = [] if name == "predict.py" else ["--data-dir", data]
    if name == "attention.py":
        extra += ["-o", tmp_path / "a.png"]
    one_error_line(script(name, nan_checkpoint, *args, *extra), "non-finite weights", "classifier.weight",
                   "encoder.blocks.0.mlp.dense_1.bias")
    assert not (tmp_path / "a.png").exists()


def test_evaluate_on_data_with_more_classes_than_the_model(trained, tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in range(11):
            d = tmp_path / "folder" / split / f"class{c:02d}"
            d.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), c * 20, np.uint8)).save(d / "a.png")
    one_error_line(script("evaluate.py", trained / "best.npz", "--dataset", "folder", "--data-dir",
                          tmp_path / "folder"), "labels up to 10", "the model knows 10 classes")


def test_evaluate_json_to_an_unwritable_path_fails_before_evaluating(trained, data, tmp_path):
    p = script("evaluate.py", trained / "best.npz", "--data-dir", data, "--json", tmp_path / "no" / "r.json")
    one_error_line(p, "does not exist")
    assert "test accuracy" not in p.stdout
    p = script("evaluate.py", trained / "best.npz", "--data-dir", data, "--json", tmp_path)
    one_error_line(p, "is a directory")


def test_attention_and_predict_arguments(trained, data, tmp_path):
    one_error_line(script("attention.py", trained / "best.npz", "--data-dir", data, "-n", "0"),
                   "expected a positive integer, got 0")
    one_error_line(script("attention.py", trained / "best.npz", "--data-dir", data, "-o", tmp_path / "x.xyz"),
                   "x.xyz", ".png")
    one_error_line(script("predict.py", trained / "best.npz", "x.png", "-k", "0"), "expected a positive integer")
    one_error_line(script("predict.py", trained / "best.npz", "x.png", "-k", "-2"), "expected a positive integer")


def test_predict_shows_at_most_every_class(trained, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    p = script("predict.py", trained / "best.npz", img, "-k", "50")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 10


def test_plot_on_a_malformed_metrics_line(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"epoch": 1, "train_loss": 2.0, "train_acc": 0.1}\n{"epoch": 2, "train_lo\n')
    one_error_line(script("plot.py", m, "-o", tmp_path / "c.png"), "line 2 is not valid JSON")
    m.write_text('[1, 2]\n')
    one_error_line(script("plot.py", m, "-o", tmp_path / "c.png"), "line 1 is not an epoch record")


def test_plot_leaves_out_non_finite_epochs(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text('{"epoch": 1, "train_loss": 2.0, "train_acc": 0.1, "test_loss": 1.9, "test_acc": 0.2}\n'
                 '{"epoch": 2, "train_loss": NaN, "train_acc": 0.1, "test_loss": null, "test_acc": 0.1}\n')
    p = script("plot.py", m, "-o", tmp_path / "c.png")
    assert p.returncode == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name,args", [
    ("evaluate.py", ["CKPT", "--data-dir", "DATA"]),
    ("train.py", ["--help"]),
    ("predict.py", ["CKPT", "IMAGE", "-k", "10"]),
])
def test_a_closed_pipe_ends_quietly(trained, data, tmp_path, name, args):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    args = [{"CKPT": trained / "best.npz", "DATA": data, "IMAGE": img}.get(a, a) for a in args]
    p = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_missing_data_hints_name_only_the_scripts_own_flags(trained, tmp_path):
    p = script("evaluate.py", trained / "best.npz", "--data-dir", tmp_path)
    one_error_line(p, "CIFAR-10 not found", "--data-dir")
    assert "--no-download" not in p.stderr
    p = script("attention.py", trained / "best.npz", "--data-dir", tmp_path)
    assert p.returncode == 2 and "--no-download" not in p.stderr
    p = script("train.py", "--data-dir", tmp_path, "--no-download", "--out-dir", tmp_path / "o")
    one_error_line(p, "CIFAR-10 not found", "drop --no-download")


def test_data_dir_may_name_the_batches_folder_itself(trained, data):
    p = script("evaluate.py", trained / "best.npz", "--data-dir", os.path.join(data, "cifar-10-batches-py"))
    assert p.returncode == 0 and "test accuracy" in p.stdout, p.stderr


def test_an_empty_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="empty batch"):
        ViT()(np.zeros((0, 3, 32, 32), np.float32))


def test_best_npz_before_the_first_evaluation_says_when_it_comes(trained, data, tmp_path):
    run = tmp_path / "early"
    run.mkdir()
    (run / "latest.npz").write_bytes((trained / "latest.npz").read_bytes())
    one_error_line(script("evaluate.py", run / "best.npz", "--data-dir", data), "no checkpoint at",
                   "best.npz yet", "first evaluation", "latest.npz meanwhile")


def test_a_pickle_in_an_npz_is_refused_without_numpys_advice(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    p = script("evaluate.py", path)
    one_error_line(p, "not a readable npvit checkpoint", "never loads")
    assert "allow_pickle" not in p.stderr


def test_the_attention_figure_says_what_the_model_reads(trained, data, tmp_path):
    """A mean-pooling model (the default recipe's) gets patch attention, not [CLS] attention."""
    from npvit.checkpoint import load_checkpoint
    from npvit.visualize import attention_maps

    model = load_checkpoint(trained / "best.npz")[0]
    assert model.config.pooling == "mean" and model.config.patch_dropout == 0.25    # recipe swift80
    x = np.zeros((2, 3, 32, 32), np.float32)
    _, atts = model(x, return_attention=True)                # in training mode: 48 of the 64 patches
    with pytest.raises(ValueError, match="48 patch tokens is no square grid.*model.eval"):
        attention_maps(atts, "mean")
    _, atts = model.eval()(x, return_attention=True)
    maps = attention_maps(atts, "mean")
    assert list(maps) == ["patch attention", "rollout"] and maps["rollout"].shape == (2, 8, 8)
    total = maps["rollout"].sum(axis=(1, 2))                 # the patches' share of the rolled-out attention
    assert ((0.5 < total) & (total <= 1 + 1e-9)).all(), total
    assert list(attention_maps(atts, "cls")) == ["CLS attention", "rollout"]
    p = script("attention.py", trained / "best.npz", "--data-dir", data, "-n", "2", "-o", tmp_path / "a.png")
    assert p.returncode == 0, p.stderr


def test_a_config_file_that_sets_a_key_twice_is_one_line(tmp_path, data):
    f = tmp_path / "twice.json"
    f.write_text('{"lr": 0.1, "epochs": 3, "lr": 0.001}')
    one_error_line(script("train.py", "--config", f, "--data-dir", data, "--out-dir", tmp_path / "o"),
                   f"config file {f} sets 'lr' twice: keep one")
    assert not (tmp_path / "o").exists()
