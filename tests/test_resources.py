"""The memory guard (npvit/resources.py): a run that cannot fit is refused before anything is allocated, in one
line and well under a second; the estimate holds against the measured peak memory of real runs."""
import os
import subprocess
import sys
import time

import pytest

from npvit import ViT, ViTConfig
from npvit.errors import ConfigError
from npvit.options import build_config
from npvit.resources import BASELINE_BYTES, check_fits, estimate, num_parameters
from tests.cifar_fixtures import REPO, write_fake_cifar


@pytest.mark.parametrize("over", [{}, {"final_layernorm": True, "pooling": "mean"}, {"qkv_bias": False},
                                  {"hidden_size": 36, "num_attention_heads": 6, "num_hidden_layers": 3,
                                   "intermediate_size": 20, "patch_size": 8, "num_channels": 1, "num_classes": 7}])
def test_the_parameter_count_comes_from_the_config_alone(over):
    config = ViTConfig(**over)
    assert num_parameters(config) == ViT(config).num_parameters()


@pytest.mark.parametrize("flags,needle", [(["--num-hidden-layers", "100000"], "2,827,206,106 parameters"),
                                          (["--hidden-size", "100000000", "--num-attention-heads", "1"], "GiB")])
def test_a_run_that_cannot_fit_is_refused_at_once_in_one_line(tmp_path, flags, needle):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", str(tmp_path),
                        "--out-dir", str(out), *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: this run would need about") and "available on this machine" in lines[0]
    assert needle in lines[0] and "--no-memory-check" in lines[0]
    assert not out.exists(), "nothing may be written before the refusal"
    assert seconds < 5, f"{seconds:.1f} s (the interpreter's start included; the check itself is arithmetic)"


def test_the_refusal_names_what_is_available_and_the_flag_lets_a_run_try(tmp_path, monkeypatch):
    import npvit.resources
    from npvit.console import Console
    from npvit.train import train

    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=16))
    cfg = build_config(overrides={"data_dir": data, "out_dir": str(tmp_path / "run"), "epochs": 1, "hidden_size": 24,
                                  "num_attention_heads": 3, "intermediate_size": 48, "num_hidden_layers": 2,
                                  "threads": 1, "batch_size": 32, "progress": False, "dataset": "cifar10"})
    monkeypatch.setattr(npvit.resources, "available_bytes", lambda backend="numpy": 2 ** 20)
    with pytest.raises(ConfigError, match=r"more than the 1 MiB available on this machine"):
        train(cfg, console=Console(log=lambda *a: None))
    assert not (tmp_path / "run").exists()
    history = train({**cfg, "memory_check": False}, console=Console(log=lambda *a: None))
    assert len(history) == 1


def test_check_fits_counts_the_gpu_for_a_cupy_run():
    cfg = build_config(overrides={"backend": "cupy", "threads": 1})
    config = ViTConfig(**{k: cfg[k] for k in ViTConfig.keys()})
    assert check_fits(cfg, config, 1, available=10 * 2 ** 30) is None
    assert "available on the GPU" in check_fits(cfg, config, 1, available=2 ** 20)


PEAK = ("import subprocess, resource, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(p.stderr, file=sys.stderr)")


@pytest.mark.parametrize("flags", [
    ["--recipe", "full", "--batch-size", "256"],
    ["--recipe", "article", "--batch-size", "128", "--hidden-size", "96", "--num-attention-heads", "3",
     "--intermediate-size", "384"],
    ["--recipe", "full", "--patch-size", "2", "--batch-size", "32", "--eval-batch-size", "64"],
], ids=["full-256", "wide-128", "patch2-32"])
def test_the_estimate_is_within_half_and_double_of_the_measured_peak(tmp_path, flags):
    per_batch = 512
    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=per_batch))
    args = ["--data-dir", data, "--out-dir", str(tmp_path / "run"), "--epochs", "1", "--eval-every", "1",
            "--no-progress", "--threads", "2", "--no-memory-check", *flags]
    p = subprocess.run([sys.executable, "-c", PEAK, sys.executable, os.path.join(REPO, "scripts", "train.py"), *args],
                       capture_output=True, text=True)
    status, kib = p.stdout.split()
    assert status == "0", p.stderr
    peak = int(kib) * 1024
    overrides = {k[2:].replace("-", "_"): (int(v) if v.isdigit() else v) for k, v in zip(flags[2::2], flags[3::2])}
    cfg = build_config(recipe=flags[1], overrides={**overrides, "threads": 2})
    config = ViTConfig(**{k: cfg[k] for k in ViTConfig.keys()})
    need = sum(estimate(cfg, config, 2, 5 * per_batch, per_batch).values()) + BASELINE_BYTES
    assert 0.5 < need / peak < 2.0, f"estimate {need / 2 ** 20:.0f} MiB, measured peak {peak / 2 ** 20:.0f} MiB"
