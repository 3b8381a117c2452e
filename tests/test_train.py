"""scripts/train.py end to end: real CIFAR-10 images, exact resume after a stop or a crash, CLI errors."""
import json
import os
import signal
import subprocess
import sys

import pytest

from npvit.errors import ConfigError
from npvit.optim import Schedule, lr_at
from npvit.training.settings import build_config
from tests.cifar_fixtures import REPO, write_fake_cifar

TRAIN = [sys.executable, os.path.join(REPO, "scripts", "train.py")]
DRIVER = os.path.join(REPO, "tests", "train_driver.py")
# A small model keeps the resume tests quick; they test the loop, not the model.
SMALL = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
         "--num-hidden-layers", "2", "--no-progress", "--threads", "2",  # 2 shards: their dropout must resume too
         "--eval-every", "1"]        # every epoch's test metrics compared (the default recipe evaluates less often)
# What a resume must carry on exactly: the schedule, the augmentations' and dropout's streams, the moving average.
RESUMED = ["--epochs", "3", "--batch-size", "64", "--warmup-epochs", "1", "--mixup", "0.2", "--hidden-dropout-prob",
           "0.1", "--drop-path-rate", "0.2", "--ema", "0.9", "--eval-raw", "--trivial-augment",
           "--trivial-augment-prob", "0.5", "--patch-dropout", "0.5", "--patch-dropout-final", "0.0"] + SMALL


def run(args, env=None, check=True):
    p = subprocess.run(TRAIN + args, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"train.py {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory):
    return str(write_fake_cifar(tmp_path_factory.mktemp("fake"), n_per_batch=64))


def test_trains_on_real_cifar10(real_data, tmp_path):
    """The article's model on the first 2,000 real training images: loss falls, accuracy well above chance."""
    out = str(tmp_path / "run")
    p = run(["--data-dir", real_data, "--out-dir", out, "--epochs", "6", "--train-limit", "2000",
             "--test-limit", "1000", "--batch-size", "64", "--warmup-epochs", "1", "--no-progress"])
    m = metrics(out)
    assert [r["epoch"] for r in m] == list(range(1, 7))
    assert m[-1]["train_loss"] < m[0]["train_loss"] - 0.1, m
    assert m[-1]["test_acc"] >= 0.25, f"test accuracy {m[-1]['test_acc']} (chance is 0.10)"
    for name in ("latest.npz", "best.npz", "config.json"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert "test loss" in p.stdout and "img/s" in p.stdout


@pytest.fixture(scope="session")
def uninterrupted(fake_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("full"))
    run(["--data-dir", fake_data, "--out-dir", out] + RESUMED)
    return metrics(out)


def drive(fault, args, check=False):
    """scripts/train.py with a fault (tests/train_driver.py): a signal at a step, or SIGKILL around a file write."""
    p = subprocess.run([sys.executable, DRIVER, fault, "--"] + args, capture_output=True, text=True, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"train_driver {fault} {args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


@pytest.mark.parametrize("sig,at", [("SIGINT", 8), ("SIGKILL", 8), ("SIGTERM", 5), ("SIGHUP", 8)])
def test_stop_and_resume_reproduces_the_uninterrupted_run(fake_data, uninterrupted, tmp_path, sig, at):
    """5 steps per epoch; a signal after step 8 (mid-epoch 2) or 5 (the end of epoch 1). SIGINT/SIGTERM/SIGHUP
    save first; SIGKILL resumes from epoch 1."""
    full = uninterrupted
    out = str(tmp_path / "stopped")
    args = ["--data-dir", fake_data, "--out-dir", out] + RESUMED
    p = drive(f"step:{at}:{sig}", args)
    if sig == "SIGKILL":
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == 0 and "resume with --resume" in p.stdout, p.stdout + p.stderr
    assert len(metrics(out)) == 1                      # stopped inside epoch 2
    p = run(["--resume", out, "--no-progress"])
    assert "resuming from" in p.stdout
    resumed = metrics(out)
    assert len(resumed) == 3
    for a, b in zip(full, resumed):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "raw_test_loss"):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a, b)


def test_cli_help_documents_the_flags():
    out = run(["--help"]).stdout
    for flag in ["--data-dir", "--out-dir", "--epochs", "--batch-size", "--lr", "--recipe", "--backend", "--dtype",
                 "--seed", "--resume", "--train-limit", "--test-limit", "--config", "--hidden-size"]:
        assert flag in out, flag


def test_cli_bad_input_is_a_clear_error(fake_data, tmp_path):
    p = run(["--epochz", "3"], check=False)
    assert p.returncode == 2 and "unrecognized arguments: --epochz" in p.stderr
    p = run(["--data-dir", fake_data, "--hidden-size", "50"], check=False)
    assert p.returncode == 2 and "hidden_size 50 is not divisible by num_attention_heads 4" in p.stderr
    p = run(["--data-dir", fake_data, "--batch-size", "0"], check=False)
    assert p.returncode == 2 and "batch_size must be a positive integer" in p.stderr
    p = run(["--recipe", "fast"], check=False)
    assert p.returncode == 2 and "invalid choice: 'fast'" in p.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    p = run(["--data-dir", fake_data, "--out-dir", str(blocker / "out")], check=False)
    assert p.returncode == 2 and "cannot write to output directory" in p.stderr and "Traceback" not in p.stderr
    p = run(["--data-dir", str(tmp_path / "empty"), "--no-download", "--out-dir", str(tmp_path / "o")], check=False)
    assert p.returncode == 2 and "CIFAR-10 not found" in p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 2, "hidden_szie": 3}')
    p = run(["--config", str(bad)], check=False)
    assert p.returncode == 2 and "unknown config keys ['hidden_szie']" in p.stderr


def test_resume_refuses_a_checkpoint_of_another_model(fake_data, tmp_path):
    out = str(tmp_path / "run")
    run(["--data-dir", fake_data, "--out-dir", out, "--epochs", "1", "--batch-size", "160"] + SMALL)
    p = run(["--resume", out, "--hidden-size", "36"], check=False)
    assert p.returncode == 2 and "is for another model" in p.stderr and "hidden_size" in p.stderr
    p = run(["--resume", str(tmp_path / "nothing")], check=False)
    assert p.returncode == 2 and "no checkpoint at" in p.stderr
    (tmp_path / "empty").mkdir()
    p = run(["--resume", str(tmp_path / "empty")], check=False)
    assert p.returncode == 2 and "holds no checkpoint" in p.stderr and "without --resume" in p.stderr


def test_config_precedence_and_schedule(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"recipe": "article", "lr": 0.5, "hidden_size": 64}))
    cfg = build_config(file=str(f), overrides={"lr": 0.25})
    assert cfg.recipe == "article" and cfg.batch_size == 256 and cfg.model.hidden_size == 64 and cfg.lr == 0.25
    assert build_config().recipe == "swift80"    # past 80% after about 21 minutes, with a margin (README, Accuracy)
    with pytest.raises(ConfigError, match="recipe must be one of"):
        build_config(recipe="nope")
    schedule = Schedule(lr=1.0, epochs=10, warmup_epochs=2.0, shape="cosine")
    lrs = [lr_at(schedule, s, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.05) and lrs[19] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[19:], lrs[20:]))
    schedule = Schedule(lr=1.0, epochs=10, warmup_epochs=2.0, shape="linear")   # straight down: lr (1 - progress)
    lrs = [lr_at(schedule, s, 10) for s in range(100)]
    assert lrs[19] == pytest.approx(1.0) and lrs[20] == pytest.approx(1.0) and lrs[99] == pytest.approx(1 / 80)
    assert lrs[60] == pytest.approx(0.5) and all(a - b == pytest.approx(1 / 80) for a, b in zip(lrs[20:], lrs[21:]))


@pytest.mark.parametrize("micro", [4, 5, 1])
@pytest.mark.parametrize("soft", [False, True])
def test_micro_batches_give_the_same_step(micro, soft):
    """Chunks of 4 (4+4+2), 5 and 1 image: the same loss, accuracy and updated weights as the whole batch."""
    import numpy as np

    from npvit import ViT
    from npvit.config import ViTConfig
    from npvit.optim import SGD
    from npvit.training.step import train_step

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 8, 8))
    labels = rng.integers(0, 5, 10)
    target = rng.dirichlet(np.ones(5), size=10) if soft else labels
    results = []
    for m in (None, micro):
        model = ViT(ViTConfig.tiny(), dtype="float64", seed=1)
        # SGD, unclipped: unlike AdamW or clipping, it is sensitive to how the chunk gradients are weighted
        opt = SGD(model, lr=0.5, momentum=0.9)
        loss, correct = train_step(model, opt, x, target, labels, label_smoothing=0.1, micro_batch=m)
        results.append((float(loss), int(correct), model.state_dict()))
    (l1, c1, w1), (l2, c2, w2) = results
    assert abs(l1 - l2) < 1e-12 and c1 == c2
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_killed_real_run_resumes_exactly(real_data, tmp_path):
    """The same on 300 real CIFAR-10 images: SIGKILL in epoch 2, resume, compare with an uninterrupted run."""
    args = ["--data-dir", real_data, "--epochs", "2", "--train-limit", "300", "--test-limit", "200",
            "--batch-size", "64", "--warmup-epochs", "0.5"] + SMALL
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    run(args + ["--out-dir", full])
    p = drive("step:8:SIGKILL", args + ["--out-dir", killed])
    assert p.returncode == -signal.SIGKILL and len(metrics(killed)) == 1
    run(["--resume", killed, "--no-progress"])
    for a, b in zip(metrics(full), metrics(killed)):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a, b)


def test_val_split_evaluates_on_held_out_training_images(fake_data, tmp_path):
    out = str(tmp_path / "val")
    p = run(["--data-dir", fake_data, "--out-dir", out, "--epochs", "2", "--batch-size", "64", "--val-split", "64",
             "--init", "torch"] + SMALL)
    m = metrics(out)
    assert all("val_acc" in r and "test_acc" not in r for r in m), m
    assert "256 train / 64 held-out (val) images" in p.stdout and "val loss" in p.stdout
    assert os.path.isfile(os.path.join(out, "best.npz"))
    assert json.load(open(os.path.join(out, "config.json")))["init"] == "torch"
    p = run(["--data-dir", fake_data, "--out-dir", str(tmp_path / "o"), "--val-split", "320"] + SMALL, check=False)
    assert p.returncode == 2 and "val_split 320 leaves no training images" in p.stderr


def test_a_patch_dropout_schedule_changes_the_rate_each_epoch(fake_data, uninterrupted, tmp_path):
    """RESUMED's rate goes 0.5, 0.25, 0.0 over its 3 epochs: the same run at a constant 0.5 trains its first
    epoch identically and the next two otherwise; the rates are in the metrics; a schedule without a starting
    rate is refused in one line."""
    out = str(tmp_path / "constant")
    args = RESUMED[:RESUMED.index("--patch-dropout-final")] + RESUMED[RESUMED.index("--patch-dropout-final") + 2:]
    run(["--data-dir", fake_data, "--out-dir", out] + args)
    constant, scheduled = metrics(out), uninterrupted
    assert [r["patch_dropout"] for r in scheduled] == [0.5, 0.25, 0.0]
    assert all("patch_dropout" not in r for r in constant)
    assert constant[0]["train_loss"] == scheduled[0]["train_loss"]
    for a, b in zip(constant[1:], scheduled[1:]):
        assert a["train_loss"] != b["train_loss"]
    p = run(["--data-dir", fake_data, "--out-dir", str(tmp_path / "x"), "--patch-dropout", "0",
             "--patch-dropout-final", "0.1"] + SMALL,
            check=False)
    assert p.returncode == 2 and "patch_dropout_final" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_help_shows_the_defaults_of_the_recipe_that_runs():
    """The model flags have help texts and choices, and their defaults are the default recipe's (swift80: mean
    pooling, a final LayerNorm, patch dropout 0.25, patch windows overlapping by 2 pixels), not the library's."""
    out = " ".join(run(["--help"]).stdout.split())
    assert "--pooling {cls,mean}" in out and "--gelu-approximate {tanh,none}" in out
    assert "(default: mean in recipe swift80; cls in article; cls in strong)" in out
    assert "(default: True in recipe swift80; False in article; False in strong)" in out
    assert "(default: 0.25 in recipe swift80; 0.0 in article; 0.0 in strong; 0.0 in sprint; 0.0 in full)" in out
    assert "(default: 2 in recipe swift80; 0 in article; 0 in strong; 0 in sprint; 0 in full; 0 in fast80)" in out
    assert "the mean of the patch tokens" in out and "--patch-dropout X" in out


def test_the_resume_hint_of_a_multi_process_run_names_the_launcher():
    from npvit.training.runstate import resume_command
    assert resume_command("runs/vit") == "--resume runs/vit"
    assert resume_command("runs/vit", 4).startswith("mpiexec -n 4 ... --resume runs/vit")
