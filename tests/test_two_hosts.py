"""Training across two hosts, each a network namespace of this machine (reference/two_hosts.py): MPI's messages cross
a veth link, each host has its own hostname and its own private directory, and no directory is shared by the
run: rank 0's host holds the run directory, each host reads its own copy of the data.

Root only (network namespaces); skipped, with the reason, where the machine refuses them or MPI is missing.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cifar_fixtures import REPO, write_fake_cifar
from reference.two_hosts import HOSTNAMES, Refused, TwoHosts, find_mpiexec

try:
    import mpi4py  # noqa: F401
    MISSING = None if find_mpiexec() else "no mpiexec: pip install -e \".[mpi]\""
except ImportError:
    MISSING = "no mpi4py: pip install -e \".[mpi]\" (mpi4py and MPICH from PyPI)"
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

TIMEOUT = 5             # --peer-timeout of these runs: seconds before a process that went away stops the run
ENV = {**os.environ, "PYTHONPATH": REPO}
for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
    ENV.pop(var, None)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """The two hosts, each with its own copy of the same small dataset at the same path, private/data."""
    try:
        with TwoHosts(tmp_path_factory.mktemp("hosts")) as h:
            for backing in h.backing:
                write_fake_cifar(os.path.join(backing, "data"), n_per_batch=64, seed=0)
            yield h
    except Refused as e:
        pytest.skip(f"this machine cannot make two hosts of network namespaces: {e}")


def args(h, out, *extra):
    """A small float64 run without randomness in its steps (no augmentation, no dropout): one process with
    the same global batch must take the same steps."""
    return ["--data-dir", os.path.join(h.private, "data"), "--out-dir", out, "--dtype", "float64",
            "--epochs", "2", "--batch-size", "64", "--augment", "none", "--no-trivial-augment", "--patch-dropout", "0",
            "--warmup-epochs", "0.5",
            "--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
            "--num-hidden-layers", "2", "--no-progress", "--threads", "1", "--eval-every", "1",
            "--peer-timeout", str(TIMEOUT), *extra]


def on_two_hosts(h, argv, timeout=300, **kw):
    return subprocess.run(h.mpiexec([sys.executable, *map(str, argv)]), capture_output=True, text=True, cwd=REPO,
                          env={**ENV, **kw}, timeout=timeout)


TRAIN = os.path.join(REPO, "scripts", "train.py")
DRIVER = os.path.join(REPO, "tests", "train_driver.py")


def weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


def run_files(h, name, host=0):
    """The files of run ``name`` as host ``host`` sees them (its private directory's backing folder)."""
    path = os.path.join(h.backing[host], name)
    return sorted(os.listdir(path)) if os.path.isdir(path) else None


@pytest.fixture(scope="module")
def across(hosts):
    """A 2-epoch run, rank 0 on host A and rank 1 on host B, over the link."""
    before = hosts.bytes_received(1)
    p = on_two_hosts(hosts, [TRAIN, *args(hosts, os.path.join(hosts.private, "across"))])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 processes" in p.stdout, p.stdout
    return hosts.bytes_received(1) - before


def test_two_hosts_train_as_one_process_does(hosts, across, tmp_path):
    """The weights of 2 processes on 2 hosts equal one process's with the same global batch, to 1e-8 (float64);
    the gradients crossed the link; the run directory exists on rank 0's host only."""
    data = write_fake_cifar(tmp_path / "data", n_per_batch=64, seed=0)
    one = tmp_path / "one"
    a = args(hosts, one)
    a[a.index("--data-dir") + 1] = str(data)
    p = subprocess.run([sys.executable, TRAIN, *a], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert p.returncode == 0, p.stderr
    w1, w2 = weights(one / "latest.npz"), weights(os.path.join(hosts.backing[0], "across", "latest.npz"))
    worst = max(float(np.abs(w1[k] - w2[k]).max() / max(np.abs(w1[k]).max(), 1e-30)) for k in w1)
    assert worst <= 1e-8, worst
    # 2 epochs x 5 steps x the gradient (about 20,000 float64 numbers each way) crossed the veth link
    params = sum(v.size for v in w1.values())
    assert across >= 10 * params * 8, (across, params)
    assert run_files(hosts, "across", host=1) is None, "host B holds none of the run's files"
    assert "latest.npz" in run_files(hosts, "across", host=0)


def metrics(path):
    import json
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def same_run(a, b):
    """Run b (resumed) ended where the uninterrupted run a did: every metric, every weight, bit for bit."""
    assert [r["epoch"] for r in metrics(b)] == [1, 2]
    for x, y in zip(metrics(a), metrics(b)):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert x[key] == y[key], (key, x, y)
    wa, wb = weights(os.path.join(a, "latest.npz")), weights(os.path.join(b, "latest.npz"))
    for k in wa:
        np.testing.assert_array_equal(wb[k], wa[k], err_msg=k)


def error_lines(text):
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error: ")]


LAUNCH = ["-disable-auto-cleanup"]          # the README's multi-host launch: npvit, not mpiexec, ends the others


def resume_on_two_hosts(h, name):
    """Resume run ``name`` on both hosts: rank 0 reads the checkpoint, host B has never seen it."""
    assert run_files(h, name, host=1) is None
    p = on_two_hosts(h, [TRAIN, "--resume", os.path.join(h.private, name)])
    assert p.returncode == 0 and "resuming from" in p.stdout, p.stdout + p.stderr
    assert run_files(h, name, host=1) is None


@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_rank_stops_the_other_in_time_and_the_run_resumes_exactly(hosts, across, killed):
    """Rank ``killed`` (on host B for 1, A for 0) is killed after step 7; the other says so in one line within
    the timeout and ends."""
    name, other = f"killed-{killed}", 1 - killed
    stamp = f"{hosts.backing[0]}/{name}-at"
    p = subprocess.run(hosts.mpiexec([sys.executable, DRIVER, f"shell:7:{killed}", "--",
                                      *args(hosts, os.path.join(hosts.private, name))], flags=LAUNCH),
                       capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={**ENV, "NPVIT_TEST_SHELL": f"date +%s.%N > {hosts.private}/{name}-at; kill -9 $PPID"})
    if killed == 1:                 # (written on host B, read here through its backing folder)
        stamp = f"{hosts.backing[1]}/{name}-at"
    took = time.time() - float(open(stamp).read())
    lines = error_lines(p.stderr)
    assert p.returncode != 0 and len(lines) == 1, p.stdout + p.stderr
    assert lines[0].startswith(f"error: rank {killed} on host {HOSTNAMES[killed]} went away: rank {other} on host "
                               f"{HOSTNAMES[other]} waited for it at step 2 of epoch 2 and it did not arrive within "
                               f"{TIMEOUT} s"), lines
    assert (f"latest.npz in {hosts.private}/{name} on rank 0's host (host {HOSTNAMES[0]}) keeps epoch 1; resume with "
            f"mpiexec -n 2 ... --resume") in lines[0], lines
    assert TIMEOUT <= took < TIMEOUT + 5, took      # from the kill to mpiexec's end
    print(f"rank {killed} killed: mpiexec ended {took:.2f} s later")
    assert metrics(os.path.join(hosts.backing[0], name))[-1]["epoch"] == 1
    resume_on_two_hosts(hosts, name)
    same_run(os.path.join(hosts.backing[0], "across"), os.path.join(hosts.backing[0], name))


def test_a_cut_link_stops_both_ranks_in_time_and_the_run_resumes_exactly(hosts, across, tmp_path):
    """Host B takes its end of the link down after step 7; both ranks end within the timeout by themselves, each
    with its one line: rank 0's reaches the user through mpiexec (on host A), rank 1's stays on host B (read here
    from a file it wrote there). mpiexec waits for host B's launcher until the link returns."""
    out, err = open(tmp_path / "out", "w"), open(tmp_path / "err", "w")
    stamp = hosts.backing[1] + "/cut-at"                  # written on host B
    p = subprocess.Popen(hosts.mpiexec([sys.executable, DRIVER, "shell:7:1", "--",
                                        *args(hosts, os.path.join(hosts.private, "cut"))], flags=LAUNCH),
                         stdout=out, stderr=err, cwd=REPO,
                         env={**ENV, "NPVIT_TEST_SHELL": f"date +%s.%N > {stamp}; ip link set {hosts.devices[1]} down",
                              "NPVIT_TEST_STDERR": f"1:{hosts.private}/cut-rank-1.err"})   # on host B
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and (len(hosts.processes("train_driver.py")) < 2 or
                                               run_files(hosts, "cut") is None):
            time.sleep(0.05)                  # until both ranks run
        deadline = t0 + 120
        while hosts.processes("train_driver.py") and time.monotonic() < deadline:
            time.sleep(0.1)
        left = hosts.processes("train_driver.py")
        took = time.time() - float(open(stamp).read())
        assert not left, f"ranks still running {took:.0f} s after the link went down: {left}"
        assert TIMEOUT <= took < TIMEOUT + 5, took       # (measured to within the 0.1 s of this loop)
        print(f"link cut: both ranks ended {took:.2f} s later")
    finally:
        hosts.link("up")
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    lines = error_lines(open(tmp_path / "err").read())
    assert lines and lines[0].startswith(f"error: rank 1 on host {HOSTNAMES[1]} went away: rank 0 on host "
                                         f"{HOSTNAMES[0]} waited for it"), lines
    lines_b = error_lines(open(os.path.join(hosts.backing[1], "cut-rank-1.err")).read())   # rank 1's, on host B
    assert len(lines_b) == 1 and lines_b[0].startswith(f"error: rank 0 on host {HOSTNAMES[0]} went away: rank 1 on "
                                                       f"host {HOSTNAMES[1]} waited for it"), lines_b
    assert metrics(os.path.join(hosts.backing[0], "cut"))[-1]["epoch"] == 1
    resume_on_two_hosts(hosts, "cut")
    same_run(os.path.join(hosts.backing[0], "across"), os.path.join(hosts.backing[0], "cut"))


def test_hosts_whose_data_differ_are_refused_naming_the_host(hosts):
    """The same --data-dir on both hosts, other images on host B: every rank stops before the first write."""
    for backing, seed in zip(hosts.backing, (0, 1)):
        write_fake_cifar(os.path.join(backing, "other-data"), n_per_batch=64, seed=seed)
    a = args(hosts, os.path.join(hosts.private, "refused"))
    a[a.index("--data-dir") + 1] = os.path.join(hosts.private, "other-data")
    p = on_two_hosts(hosts, [TRAIN, *a], timeout=120)
    lines = error_lines(p.stderr)
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    assert lines[0].startswith(f"error: the processes read different data: rank 1 on host {HOSTNAMES[1]} read other "
                               f"images or labels than rank 0 on host {HOSTNAMES[0]}"), lines
    assert run_files(hosts, "refused") in (None, []) and run_files(hosts, "refused", host=1) is None
