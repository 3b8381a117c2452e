"""Training across processes through MPI (npvit/distributed.py), run here as mpiexec -n 2 on one machine.

Skipped, with the reason, where mpi4py or an MPI launcher is missing (pip install -e ".[mpi]").
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from reference.two_hosts import find_mpiexec
from tests.cifar_fixtures import REPO

try:
    import mpi4py  # noqa: F401
    MPIEXEC = find_mpiexec()
except ImportError:
    MPIEXEC = None
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no MPI here: pip install -e \".[mpi]\" (mpi4py and MPICH "
                                                          "from PyPI) to run the MPI tests")

SMALL = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
         "--num-hidden-layers", "2", "--no-progress", "--threads", "1",
         "--eval-every", "1"]        # every epoch's test metrics compared (the default recipe evaluates less often)
ENV = {**os.environ, "PYTHONPATH": REPO}
for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):   # a test run inside mpiexec: start clean
    ENV.pop(var, None)


def launcher_flags():
    """Open MPI refuses root and more ranks than cores unless told; MPICH (the [mpi] extra's) needs nothing."""
    p = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True)
    return ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in p.stdout + p.stderr else []


FLAGS = launcher_flags() if MPIEXEC else []


def mpi(n, *args, timeout=300):
    return subprocess.run([MPIEXEC, *FLAGS, "-n", str(n), sys.executable, *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=ENV, timeout=timeout)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


def test_two_processes_take_the_one_process_step(tmp_path):
    """2 processes x 128 rows give the weights of 1 process x 256 after 5 AdamW steps (decay, smoothing, clipping)."""
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    p = subprocess.run([sys.executable, os.path.join(REPO, "tests", "mpi_steps.py"), one], capture_output=True,
                       text=True, cwd=REPO, env=ENV)
    assert p.returncode == 0 and "rank 0 of 1 done" in p.stdout, p.stderr
    p = mpi(2, os.path.join(REPO, "tests", "mpi_steps.py"), two)
    assert p.returncode == 0 and "rank 0 of 2 done" in p.stdout and "rank 1 of 2 done" in p.stdout, p.stderr
    a, b = np.load(one), np.load(two)
    assert np.abs(a - b).max() <= 1e-10 * np.abs(a).max(), np.abs(a - b).max()
    from npvit import ViT
    from npvit.config import ViTConfig

    start = ViT(ViTConfig.tiny(), dtype="float64", seed=0).flat.params
    assert np.abs(a - start).max() > 1e-3, "the steps should have moved the weights"


def run_args(data, out):
    return ["--data-dir", data, "--out-dir", out, "--epochs", "2", "--train-limit", "640", "--test-limit", "300",
            "--batch-size", "64", "--warmup-epochs", "0.5", "--hidden-dropout-prob", "0.1", "--check-replicas", "3",
            *SMALL]


@pytest.fixture(scope="module")
def uninterrupted(real_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mpi") / "full")
    p = mpi(2, os.path.join(REPO, "scripts", "train.py"), *run_args(real_data, out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 processes" in p.stdout and p.stdout.count("epoch ") >= 2, p.stdout
    return out


def same_run(a, b):
    ma, mb = metrics(a), metrics(b)
    assert [r["epoch"] for r in mb] == [1, 2]
    for x, y in zip(ma, mb):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert abs(x[key] - y[key]) <= 1e-9, (key, x, y)
    wa, wb = weights(os.path.join(a, "latest.npz")), weights(os.path.join(b, "latest.npz"))
    for k in wa:
        np.testing.assert_array_equal(wb[k], wa[k], err_msg=k)


def test_a_two_process_run_killed_mid_epoch_resumes_exactly(real_data, uninterrupted, tmp_path):
    out = str(tmp_path / "killed")
    p = mpi(2, os.path.join(REPO, "tests", "train_driver.py"), "step:13:SIGKILL", "--", *run_args(real_data, out))
    assert p.returncode != 0 and len(metrics(out)) == 1, p.stdout + p.stderr        # 10 steps an epoch: in epoch 2
    p = mpi(2, os.path.join(REPO, "scripts", "train.py"), "--resume", out)
    assert p.returncode == 0 and "resuming from" in p.stdout, p.stdout + p.stderr
    same_run(uninterrupted, out)


def test_ctrl_c_in_one_rank_stops_every_rank_at_the_same_step(real_data, uninterrupted, tmp_path):
    out = str(tmp_path / "stopped")
    p = mpi(2, os.path.join(REPO, "tests", "train_driver.py"), "step:14:SIGINT:0", "--", *run_args(real_data, out))
    assert p.returncode == 0 and "at epoch 2 step 4" in p.stdout, p.stdout + p.stderr
    p = mpi(2, os.path.join(REPO, "scripts", "train.py"), "--resume", out)
    assert p.returncode == 0, p.stdout + p.stderr
    same_run(uninterrupted, out)


def test_a_failing_or_dying_rank_ends_the_run_and_it_resumes(real_data, uninterrupted, tmp_path):
    out = str(tmp_path / "failed")
    p = mpi(2, os.path.join(REPO, "tests", "train_driver.py"), "raise:12:1", "--", *run_args(real_data, out),
            timeout=120)
    assert p.returncode != 0 and "rank 1: error: RuntimeError: injected failure in rank 1" in p.stderr, p.stderr
    p = mpi(2, os.path.join(REPO, "tests", "train_driver.py"), "step:15:SIGKILL:1", "--", "--resume", out,
            timeout=120)
    assert p.returncode != 0, p.stdout + p.stderr          # MPI's launcher took the other rank down too
    p = mpi(2, os.path.join(REPO, "scripts", "train.py"), "--resume", out)
    assert p.returncode == 0, p.stdout + p.stderr
    same_run(uninterrupted, out)


def test_resuming_on_another_number_of_processes_is_refused(uninterrupted, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(uninterrupted, copy)
    p = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train.py"), "--resume", copy, "--epochs", "3"],
                       capture_output=True, text=True, cwd=REPO, env=ENV)
    assert p.returncode == 2 and "was written by a run on 2 process(es)" in p.stderr and "mpirun -np 2" in p.stderr


def test_a_usage_error_ends_every_rank_with_one_line_each(tmp_path):
    p = mpi(2, os.path.join(REPO, "scripts", "train.py"), "--data-dir", tmp_path, "--no-download", "--out-dir",
            tmp_path / "o", *SMALL, timeout=120)
    assert p.returncode != 0 and "CIFAR-10 not found" in p.stderr and "Traceback" not in p.stderr, p.stderr


# -- ranks that agree or stop ---------------------------------------------------------------------------------------
def mpmd(*per_rank, timeout=120):
    """One process per argument list (MPI's multiple-program launch: ``mpiexec -n 1 A : -n 1 B``)."""
    cmd = [MPIEXEC, *FLAGS]
    for i, args in enumerate(per_rank):
        cmd += ([":"] if i else []) + ["-n", "1", sys.executable, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


def the_one_line(p):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    return lines[0]


def test_ranks_started_with_different_settings_stop_before_writing(tmp_path):
    from tests.cifar_fixtures import write_fake_cifar
    data, out = str(write_fake_cifar(tmp_path / "data", n_per_batch=64)), tmp_path / "run"
    args = [os.path.join(REPO, "scripts", "train.py"), "--data-dir", data, "--out-dir", out, "--epochs", "1",
            "--batch-size", "64", *SMALL]
    line = the_one_line(mpmd([*args, "--seed", "1"], [*args, "--seed", "2"]))
    assert "the processes were started with different settings: seed is 1 on rank 0 but 2 on rank 1" in line, line
    assert not out.exists() or os.listdir(out) == [], "a run that could not agree wrote something"


def test_ranks_that_read_different_data_are_refused_naming_the_hosts(tmp_path):
    import socket
    from tests.cifar_fixtures import write_fake_cifar
    a = str(write_fake_cifar(tmp_path / "a", n_per_batch=64, seed=0))
    b = str(write_fake_cifar(tmp_path / "b", n_per_batch=64, seed=1))
    args = ["--out-dir", tmp_path / "run", "--epochs", "1", "--batch-size", "64", *SMALL]
    train = os.path.join(REPO, "scripts", "train.py")
    line = the_one_line(mpmd([train, "--data-dir", a, *args], [train, "--data-dir", b, *args]))
    assert (f"the processes read different data: rank 1 on host {socket.gethostname()} read other images or labels "
            f"than rank 0") in line, line
    # each host's own copy of the same data, at another path: that is allowed
    c = str(write_fake_cifar(tmp_path / "c", n_per_batch=64, seed=0))
    p = mpmd([train, "--data-dir", a, *args], [train, "--data-dir", c, *args])
    assert p.returncode == 0, p.stderr


def test_replicas_that_drift_are_one_line_with_exit_status_2(tmp_path):
    from tests.cifar_fixtures import write_fake_cifar
    data = str(write_fake_cifar(tmp_path / "data", n_per_batch=64))
    p = mpi(2, os.path.join(REPO, "tests", "train_driver.py"), "perturb:2:1", "--", "--data-dir", data, "--out-dir",
            tmp_path / "run", "--epochs", "1", "--batch-size", "64", "--check-replicas", "3", *SMALL, timeout=120)
    line = the_one_line(p)
    assert "the processes' weights differ after epoch 1, step 3: rank 1 holds other weights than rank 0" in line, line
