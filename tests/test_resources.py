"""The memory guard (npvit/resources.py): a run that cannot fit is refused before anything is allocated, in one
line and well under a second; the estimate holds against the measured peak memory of real runs."""
import os
import subprocess
import sys
import time

import pytest

from npvit import ViT, ViTConfig
from npvit.errors import ConfigError
from npvit.training.settings import build_config
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
    from npvit.training.console import Console
    from npvit.training.run import train

    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=16))
    cfg = build_config(overrides={"data_dir": data, "out_dir": str(tmp_path / "run"), "epochs": 1, "hidden_size": 24,
                                  "num_attention_heads": 3, "intermediate_size": 48, "num_hidden_layers": 2,
                                  "threads": 1, "batch_size": 32, "progress": False, "dataset": "cifar10"})
    monkeypatch.setattr(npvit.resources, "available_memory", lambda backend="numpy": (2 ** 20, "on this machine"))
    with pytest.raises(ConfigError, match=r"more than the 1 MiB available on this machine"):
        train(cfg, console=Console(log=lambda *a: None))
    assert not (tmp_path / "run").exists()
    history = train(cfg.replace(memory_check=False), console=Console(log=lambda *a: None))
    assert len(history) == 1


def test_check_fits_counts_the_gpu_for_a_cupy_run():
    cfg = build_config(overrides={"backend": "cupy", "threads": 1})
    assert check_fits(cfg, 1, available=10 * 2 ** 30) is None
    assert "available on the GPU" in check_fits(cfg, 1, available=2 ** 20)
    graphs = estimate(cfg.replace(cuda_graph=True))                 # a captured step keeps a pool of its own
    assert graphs["the CUDA graphs' memory pool"] > 0 and "the CUDA graphs' memory pool" not in estimate(cfg)


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
    need = sum(estimate(cfg, 2, 5 * per_batch, per_batch).values()) + BASELINE_BYTES
    assert 0.5 < need / peak < 2.0, f"estimate {need / 2 ** 20:.0f} MiB, measured peak {peak / 2 ** 20:.0f} MiB"


# -- the limit that applies to this process: its own cgroups, v1 and v2, walked up to the tightest --------------------
def fake_root(tmp_path, cgroup, mountinfo, files):
    """A folder standing for /: /proc/self/cgroup and /proc/self/mountinfo as given, and cgroup files."""
    for path, text in {"proc/self/cgroup": cgroup, "proc/self/mountinfo": mountinfo, **files}.items():
        p = tmp_path / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path)


MiB = 2 ** 20
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = ("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
            "36 31 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n")


@pytest.mark.parametrize("case", ["v2-parent-tighter", "v2-own", "v1-child", "v1-container-root", "no-limit",
                                  "unreadable"])
def test_the_cgroup_limit_is_this_process_own_and_the_tightest_above_it(tmp_path, case):
    from npvit.resources import cgroup_headroom
    if case == "v2-parent-tighter":     # the group's own memory.max is "max"; its parent's 1 GiB, 300 MiB used,
        root = fake_root(tmp_path, "0::/user.slice/app\n", V2_MOUNT, {   # 100 MiB of it reclaimable cache
            "sys/fs/cgroup/user.slice/app/memory.max": "max\n", "sys/fs/cgroup/user.slice/app/memory.current": "0\n",
            "sys/fs/cgroup/user.slice/memory.max": f"{1024 * MiB}\n",
            "sys/fs/cgroup/user.slice/memory.current": f"{300 * MiB}\n",
            "sys/fs/cgroup/user.slice/memory.stat": f"anon 1\ninactive_file {100 * MiB}\nactive_file 5\n"})
        expected = (1024 - 200) * MiB
    elif case == "v2-own":
        root = fake_root(tmp_path, "0::/app\n", V2_MOUNT, {
            "sys/fs/cgroup/app/memory.max": f"{400 * MiB}\n", "sys/fs/cgroup/app/memory.current": f"{50 * MiB}\n",
            "sys/fs/cgroup/memory.max": "max\n"})
        expected = 350 * MiB
    elif case == "v1-child":            # as this machine has it: a v1 memory group below the mount's root
        root = fake_root(tmp_path, "9:cpu:/\n4:memory:/process_api/abc/npvit\n0::/\n", V1_MOUNT, {
            "sys/fs/cgroup/memory/process_api/abc/npvit/memory.limit_in_bytes": f"{400 * MiB}\n",
            "sys/fs/cgroup/memory/process_api/abc/npvit/memory.usage_in_bytes": f"{60 * MiB}\n",
            "sys/fs/cgroup/memory/process_api/abc/npvit/memory.stat": f"cache 1\ntotal_inactive_file {10 * MiB}\n",
            "sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/process_api/abc/memory.usage_in_bytes": f"{900 * MiB}\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"})
        expected = 350 * MiB
    elif case == "v1-container-root":   # a container that sees its own group as the mount's root
        root = fake_root(tmp_path, "4:memory:/docker/abc\n",
                         "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n", {
                             "sys/fs/cgroup/memory/memory.limit_in_bytes": f"{2048 * MiB}\n",
                             "sys/fs/cgroup/memory/memory.usage_in_bytes": f"{48 * MiB}\n"})
        expected = 2000 * MiB
    elif case == "no-limit":
        root = fake_root(tmp_path, "0::/app\n", V2_MOUNT, {"sys/fs/cgroup/app/memory.max": "max\n",
                                                           "sys/fs/cgroup/memory.max": "max\n"})
        expected = None
    else:
        root, expected = str(tmp_path), None                          # no /proc here at all
    assert cgroup_headroom(root) == expected


def own_memory_cgroup():
    """A folder where this process may make a child memory cgroup (v1's memory controller, or v2 with memory
    delegated), or the reason there is none."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None, "no /proc/self/cgroup (not Linux)"
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = "/sys/fs/cgroup/memory" + path
            if os.path.isfile(os.path.join(folder, "memory.limit_in_bytes")):
                return (folder, "memory.limit_in_bytes"), None
        if hid == "0" and controllers == "":
            folder = "/sys/fs/cgroup" + path
            if "memory" in open(os.path.join(folder, "cgroup.subtree_control")).read().split() \
                    if os.path.isfile(os.path.join(folder, "cgroup.subtree_control")) else False:
                return (folder, "memory.max"), None
    return None, "no memory cgroup this process can make a child of (cgroup v2 without memory delegated?)"


def test_a_run_in_a_small_child_cgroup_is_refused_not_killed(tmp_path):
    """A real child cgroup of this process's own, limited to 400 MB: the default run is refused in one line, where
    it was OOM-killed (exit 137, no message) when only the root cgroup was read."""
    place, reason = own_memory_cgroup()
    if place is None:
        pytest.skip(reason)
    parent, limit_file = place
    group = os.path.join(parent, f"npvit-test-{os.getpid()}")
    try:
        os.mkdir(group)
        with open(os.path.join(group, limit_file), "w") as f:
            f.write(str(400 * 10 ** 6))
    except OSError as e:
        if os.path.isdir(group):
            os.rmdir(group)
        pytest.skip(f"cannot make a child memory cgroup here ({e.strerror}): not root, or no delegation")
    try:
        def join():
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        data = str(write_fake_cifar(tmp_path / "data", n_per_batch=16))
        p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--data-dir", data,
                            "--out-dir", str(tmp_path / "run")], capture_output=True, text=True, preexec_fn=join)
    finally:
        os.rmdir(group)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)
    assert "this run would need about" in lines[0] and "available in this process's cgroup" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_a_batch_is_counted_no_larger_than_the_images_it_draws_from():
    cfg = build_config(overrides={"threads": 1, "batch_size": 4096, "eval_batch_size": 8192})
    small = estimate(cfg.replace(train_limit=100, test_limit=50), 1)
    same = estimate(cfg.replace(batch_size=100, eval_batch_size=50, train_limit=100, test_limit=50), 1)
    assert small == same
    assert estimate(cfg, 1)["activations"] > small["activations"]
