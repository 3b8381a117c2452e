"""A run directory belongs to one run, a run killed at any instant resumes exactly, divergence is caught.

Every case of the run-safety issue is reproduced here through scripts/train.py itself,
on a small model and small fake CIFAR-10 (5 steps per epoch), so each run takes a second or two.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from npvit.runfiles import RunDir, read_metrics, write_metrics
from tests.cifar_fixtures import REPO, write_fake_cifar

TRAIN = [sys.executable, os.path.join(REPO, "scripts", "train.py")]
DRIVER = [sys.executable, os.path.join(REPO, "tests", "train_driver.py")]
SMALL = ["--hidden-size", "24", "--num-attention-heads", "3", "--intermediate-size", "48",
         "--num-hidden-layers", "2", "--no-progress", "--threads", "2", "--batch-size", "64",
         "--eval-every", "1"]        # every epoch's test metrics compared (the default recipe evaluates less often)


def run(args, check=True, cmd=TRAIN, **kw):
    p = subprocess.run(cmd + args, capture_output=True, text=True, cwd=REPO, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def snapshot(folder):
    """{name: bytes} of every file in a directory, to prove nothing in it changed."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(write_fake_cifar(tmp_path_factory.mktemp("fake"), n_per_batch=64))


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A finished 1-epoch run, with a curves.png as plot.py leaves it."""
    out = str(tmp_path_factory.mktemp("runs") / "a")
    run(["--data-dir", data, "--out-dir", out, "--epochs", "1"] + SMALL)
    run(["--out", os.path.join(out, "curves.png"), out], cmd=[sys.executable, os.path.join(REPO, "scripts",
                                                                                            "plot.py")])
    return out


# -- a run directory belongs to one run ------------------------------------------------------
def test_a_fresh_run_into_a_used_directory_is_refused_and_changes_nothing(data, finished_run):
    before = snapshot(finished_run)
    p = run(["--data-dir", data, "--out-dir", finished_run, "--epochs", "1"] + SMALL, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "already holds files" in p.stderr and "--resume" in p.stderr and "--overwrite" in p.stderr
    assert snapshot(finished_run) == before


def test_overwrite_replaces_the_whole_run(data, finished_run, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(finished_run, out)
    before = snapshot(out)
    # a new run that cannot start (no data here) leaves the old one in place
    p = run(["--data-dir", str(tmp_path), "--no-download", "--out-dir", out, "--overwrite"] + SMALL, check=False)
    assert p.returncode == 2 and "CIFAR-10 not found" in p.stderr and snapshot(out) == before
    run(["--data-dir", data, "--out-dir", out, "--epochs", "2", "--seed", "7", "--overwrite"] + SMALL)
    assert [r["epoch"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))] == [1, 2]
    assert not os.path.exists(os.path.join(out, "curves.png")), "the old run's picture stayed"
    assert json.load(open(os.path.join(out, "config.json")))["seed"] == 7


def test_resume_continues_in_the_resumed_directory(data, finished_run, tmp_path):
    """A moved or copied run resumes where it is now; the original is not touched."""
    before = snapshot(finished_run)
    moved = str(tmp_path / "moved")
    shutil.copytree(finished_run, moved)
    p = run(["--resume", moved, "--epochs", "2"])
    assert "writing to " + moved in p.stdout
    assert [r["epoch"] for r in read_metrics(os.path.join(moved, "metrics.jsonl"))] == [1, 2]
    assert json.load(open(os.path.join(moved, "config.json")))["out_dir"] == moved
    assert snapshot(finished_run) == before


def test_resume_into_another_runs_directory_is_refused(data, finished_run, tmp_path):
    other = str(tmp_path / "other")
    run(["--data-dir", data, "--out-dir", other, "--epochs", "1", "--hidden-size", "36"] + SMALL[2:])
    before, mine = snapshot(other), snapshot(finished_run)
    p = run(["--resume", finished_run, "--out-dir", other, "--epochs", "2"], check=False)
    assert p.returncode == 2 and "would mix two runs" in p.stderr and "Traceback" not in p.stderr
    assert snapshot(other) == before and snapshot(finished_run) == mine
    # into an empty directory it branches: the history comes along, the source stays as it was
    branch = str(tmp_path / "branch")
    run(["--resume", finished_run, "--out-dir", branch, "--epochs", "2"])
    assert [r["epoch"] for r in read_metrics(os.path.join(branch, "metrics.jsonl"))] == [1, 2]
    assert os.path.isfile(os.path.join(branch, "best.npz"))
    assert snapshot(finished_run) == mine


def test_resuming_an_older_checkpoint_in_place_is_refused(finished_run):
    before = snapshot(finished_run)
    p = run(["--resume", os.path.join(finished_run, "best.npz"), "--epochs", "2"], check=False)
    assert p.returncode == 2 and "would replace" in p.stderr and "--out-dir" in p.stderr
    assert snapshot(finished_run) == before


def test_a_running_directory_is_locked_and_a_stale_lock_is_taken_over(data, tmp_path):
    out = str(tmp_path / "busy")
    with RunDir(out):                                  # another process (this one) trains there
        p = run(["--data-dir", data, "--out-dir", out, "--epochs", "1"] + SMALL, check=False)
        assert p.returncode == 2 and "in use by another npvit process" in p.stderr and f"pid {os.getpid()}" in p.stderr
        p = run(["--resume", out], check=False)
        assert p.returncode == 2
    # a lock left by a process that died holds nothing: the next run takes it over and removes it
    with open(os.path.join(out, ".lock"), "w") as f:
        f.write("pid 999999 on elsewhere\n")
    run(["--data-dir", data, "--out-dir", out, "--epochs", "1"] + SMALL)
    assert sorted(os.listdir(out)) == ["best.npz", "config.json", "latest.npz", "metrics.jsonl"]


# -- crash consistency -----------------------------------------------------------------------
FAULT_ARGS = ["--epochs", "3", "--save-every", "2", "--warmup-epochs", "1", "--mixup", "0.2",
              "--hidden-dropout-prob", "0.1"] + SMALL
STEPS = 15            # 3 epochs of 5 steps
WRITES = 8            # the uninterrupted run makes 8 to 10 atomic writes (checkpoints, metrics, config)


def fault_plan(trials=16, seed=2026):
    """Where to kill the run: after a random step, in the middle of a write, or just after a write became
    visible; and Ctrl-C / SIGTERM at random steps. The first write (the initial latest.npz) is always among them."""
    rng = np.random.default_rng(seed)
    plan = ["write:1", "replace:1"]
    while len(plan) < trials:
        kind = rng.choice(["step", "write", "replace", "signal"], p=[0.35, 0.25, 0.25, 0.15])
        if kind == "step":
            f = f"step:{rng.integers(1, STEPS)}:SIGKILL"
        elif kind == "signal":
            f = f"step:{rng.integers(1, STEPS)}:{rng.choice(['SIGINT', 'SIGTERM'])}"
        else:
            f = f"{kind}:{rng.integers(2, WRITES + 1)}"
        if f not in plan:
            plan.append(f)
    return plan


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference") / "run")
    run(["--data-dir", data, "--out-dir", out] + FAULT_ARGS)
    return out


def same_metrics(a, b):
    assert [r["epoch"] for r in b] == [r["epoch"] for r in a], "each epoch once, in order"
    for x, y in zip(a, b):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert abs(x[key] - y[key]) <= 1e-12 * max(1.0, abs(x[key])), (key, x, y)


@pytest.mark.parametrize("fault", fault_plan())
def test_killed_at_any_instant_resumes_to_the_uninterrupted_run(data, reference, tmp_path, fault):
    out = str(tmp_path / "run")
    fresh = ["--data-dir", data, "--out-dir", out] + FAULT_ARGS
    p = run(["--", *fresh], cmd=DRIVER + [fault], check=False)
    if fault.startswith("step:") and not fault.endswith("SIGKILL"):
        assert p.returncode == 0 and "resume with --resume" in p.stdout, p.stdout + p.stderr
    else:
        assert p.returncode == -signal.SIGKILL, f"the fault did not fire: {p.returncode}\n{p.stdout}\n{p.stderr}"
    if os.path.isfile(os.path.join(out, "latest.npz")):
        run(["--resume", out])
    else:                  # killed before the first checkpoint existed: nothing to resume, start again
        assert fault == "write:1"
        p = run(["--resume", out], check=False)
        assert p.returncode == 2 and "holds no checkpoint" in p.stderr
        run(fresh)
    same_metrics(read_metrics(os.path.join(reference, "metrics.jsonl")), read_metrics(os.path.join(out,
                                                                                                  "metrics.jsonl")))
    for name in ("latest.npz", "best.npz"):
        ref, got = weights(os.path.join(reference, name)), weights(os.path.join(out, name))
        assert ref.keys() == got.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{name} {k}")
    assert sorted(os.listdir(out)) == ["best.npz", "config.json", "latest.npz", "metrics.jsonl"], \
        "temporary or lock files left behind"


# -- divergence ---------------------------------------------------------------------------------
def test_divergence_stops_with_an_error_and_keeps_the_last_finite_state(data, tmp_path):
    out = str(tmp_path / "nan")
    p = run(["--data-dir", data, "--out-dir", out, "--epochs", "3", "--lr", "1e6"] + SMALL, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged in epoch 1"), p.stderr
    assert "learning rate" in lines[0] and "latest.npz keeps the last finite state" in lines[0]
    for k, v in weights(os.path.join(out, "latest.npz")).items():
        assert np.isfinite(v).all(), k
    assert not os.path.exists(os.path.join(out, "best.npz"))


def test_metrics_are_strict_json(tmp_path):
    path = str(tmp_path / "metrics.jsonl")
    write_metrics(path, [{"epoch": 1, "train_loss": float("nan"), "test_loss": float("inf"), "train_acc": 0.1}])

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    rows = [json.loads(line, parse_constant=refuse) for line in open(path)]
    assert rows == [{"epoch": 1, "train_loss": None, "test_loss": None, "train_acc": 0.1}]


# -- the machine says no: a full disk, a quota, a read-only file system, a vanished folder --------------------
def one_line(p, *needles):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def latest_epoch(out):
    from npvit.checkpoint import read_checkpoint
    return read_checkpoint(os.path.join(out, "latest.npz")).meta["train"]["epoch"]


# Writes of a 3-epoch run (save every epoch): 1 latest (initial), 2 config.json, then per epoch best, latest,
# metrics.jsonl. The 7th is epoch 2's latest.npz.
@pytest.mark.parametrize("code,cause", [("ENOSPC", "is full"), ("EDQUOT", "quota"), ("EROFS", "read-only file system"),
                                        ("EACCES", "permission denied"),
                                        ("EIO", "input/output error")])
def test_a_refused_checkpoint_write_is_one_line_and_loses_nothing(data, reference_3, tmp_path, code, cause):
    out = str(tmp_path / "run")
    fresh = ["--data-dir", data, "--out-dir", out, "--epochs", "3"] + SMALL
    p = run(["--", *fresh], cmd=DRIVER + [f"oserror:7:{code}"], check=False)
    line = one_line(p, f"cannot write {os.path.join(out, 'latest.npz')}", cause, "the previous latest.npz is intact",
                    f"--resume {out}")
    if code in ("ENOSPC", "EDQUOT"):
        assert "free" in line and "it needs" in line, line
    assert sorted(os.listdir(out)) == ["best.npz", "config.json", "latest.npz", "metrics.jsonl"], os.listdir(out)
    assert latest_epoch(out) == 1                        # the last good state
    assert [r["epoch"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))] == [1], \
        "metrics.jsonl lists an epoch that latest.npz does not hold"
    run(["--resume", out])                               # the cause fixed: it continues exactly
    same_metrics(read_metrics(os.path.join(reference_3, "metrics.jsonl")), read_metrics(os.path.join(out,
                                                                                                    "metrics.jsonl")))
    ref, got = weights(os.path.join(reference_3, "latest.npz")), weights(os.path.join(out, "latest.npz"))
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("nth,name", [(2, "config.json"), (3, "best.npz"), (5, "metrics.jsonl")])
def test_every_full_disk_message_gives_the_size_and_the_space_free(data, tmp_path, nth, name):
    out = str(tmp_path / "run")
    p = run(["--", "--data-dir", data, "--out-dir", out, "--epochs", "1"] + SMALL, cmd=DRIVER + [f"oserror:{nth}:ENOSPC"],
            check=False)
    line = one_line(p, f"cannot write {os.path.join(out, name)}", "is full", "it needs", "iB free")
    assert "needs 0.0" not in line


def test_a_full_disk_message_never_contradicts_itself(tmp_path):
    import errno
    from npvit.runfiles import write_error
    free = shutil.disk_usage(tmp_path).free
    small = str(write_error(OSError(errno.ENOSPC, "full"), str(tmp_path / "f"), 1024))
    assert "it needs 1.0 KiB; the system refused it with" in small            # plenty free: no "needs X, more free"
    big = str(write_error(OSError(errno.ENOSPC, "full"), str(tmp_path / "f"), free + 2 ** 30))
    assert ", " in big and "iB free)" in big and "refused it" not in big


@pytest.fixture(scope="module")
def reference_3(data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference3") / "run")
    run(["--data-dir", data, "--out-dir", out, "--epochs", "3"] + SMALL)
    return out


def test_a_run_directory_that_vanishes_is_one_line(data, tmp_path):
    out = str(tmp_path / "gone")
    p = run(["--", "--data-dir", data, "--out-dir", out, "--epochs", "2"] + SMALL, cmd=DRIVER + ["rmtree:3"],
            check=False)
    one_line(p, f"the run directory {out} was deleted while this run was running", "stopped")
    assert not os.path.exists(out)


def test_a_deleted_and_reused_run_directory_is_never_shared(data, tmp_path):
    """Run A's directory is deleted and run B trains to its end in the same path while A still runs: A stops
    with one line at its next write, and B's files stay exactly as B left them (the lock alone cannot see
    this: each run locks a different .lock)."""
    import hashlib
    out, snap = str(tmp_path / "run"), str(tmp_path / "b.json")
    args = ["--data-dir", data, "--out-dir", out, "--epochs", "2"] + SMALL
    p = run(["--", *args], cmd=DRIVER + ["reuse:3"], check=False, env={**os.environ, "NPVIT_TEST_SNAPSHOT": snap})
    one_line(p, f"the run directory {out} was deleted while this run was running",
             f"the folder now at {out} is another one, and was left as it is")
    b = json.load(open(snap))
    assert sorted(b) == ["best.npz", "config.json", "latest.npz", "metrics.jsonl"], b
    assert {n: hashlib.sha256(open(os.path.join(out, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(out))} == b, "run A wrote into run B's directory"
    assert json.load(open(os.path.join(out, "config.json")))["seed"] == 99
    assert [r["epoch"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))] == [1, 2]


def test_a_run_directory_writes_only_into_the_folder_it_locked(tmp_path):
    """Below the check: even a write that skipped it lands in the folder that was locked (gone here, so it
    fails), never in the new folder at the same path; and the first run's exit leaves the second's lock."""
    from npvit.errors import RunDirError, WriteError
    out = str(tmp_path / "run")
    a = RunDir(out).__enter__()
    a.write_text("config.json", "a")
    shutil.rmtree(out)
    with RunDir(out) as b:
        b.write_text("config.json", "b")
        with pytest.raises(RunDirError, match="was deleted while this run was running"):
            a.write_text("config.json", "a again")
        a.check = lambda: None                          # as if the path changed between the check and the write
        with pytest.raises(WriteError, match="does not exist"):
            a.write_text("config.json", "a again")
        a.__exit__(None, None, None)
        assert open(os.path.join(out, "config.json")).read() == "b"
        assert os.path.exists(b.lock_path), "the first run removed the second run's lock file"
        assert sorted(os.listdir(out)) == [".lock", "config.json"]


def test_a_run_directory_renamed_under_a_run_stops_it_and_says_where_it_went(data, reference_3, tmp_path):
    out = str(tmp_path / "run")
    p = run(["--", "--data-dir", data, "--out-dir", out, "--epochs", "3"] + SMALL, cmd=DRIVER + ["rename:7"],
            check=False)
    one_line(p, f"the run directory {out} was moved to {out}-moved", f"--resume {out}-moved")
    assert not os.path.exists(out), "the stopped run made its old path again"
    assert latest_epoch(out + "-moved") == 1
    run(["--resume", out + "-moved"])                  # it continues where it went, exactly
    ref, got = weights(os.path.join(reference_3, "latest.npz")), weights(os.path.join(out + "-moved", "latest.npz"))
    assert all(np.array_equal(ref[k], got[k]) for k in ref)


def test_a_full_disk_for_real(data, tmp_path):
    """A 1 MiB tmpfs (where this machine lets the test mount one): the first checkpoint does not fit."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root, or no mount in this container)")
    try:
        p = run(["--data-dir", data, "--out-dir", str(mnt / "run"), "--epochs", "1", "--hidden-size", "96",
                 "--num-attention-heads", "3", "--intermediate-size", "384", "--num-hidden-layers", "2",
                 "--no-progress", "--threads", "1", "--batch-size", "64"], check=False)
        one_line(p, "cannot write", "latest.npz", "is full", "it needs", "iB free)", "start the run again")
        assert sorted(os.listdir(mnt / "run")) == [], "a temporary file or a half checkpoint was left"
    finally:
        subprocess.run(["umount", str(mnt)])


def test_unwritable_output_directories_say_why(data, tmp_path):
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    one_line(run(["--data-dir", data, "--out-dir", str(dangling), "--epochs", "1"] + SMALL, check=False),
             "is a symbolic link to", "which does not exist")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line(run(["--data-dir", data, "--out-dir", str(a_file), "--epochs", "1"] + SMALL, check=False),
             "is a file, not a folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        return
    try:
        one_line(run(["--data-dir", data, "--out-dir", str(ro / "run"), "--epochs", "1"] + SMALL, check=False),
                 "read-only file system")
    finally:
        subprocess.run(["umount", str(ro)])


def test_ctrl_c_during_the_first_checkpoint_saves_and_stops(data, tmp_path):
    out = str(tmp_path / "run")
    p = run(["--", "--data-dir", data, "--out-dir", out, "--epochs", "2"] + SMALL, cmd=DRIVER + ["sigint-write:1"],
            check=False)
    assert p.returncode == 0 and "resume with --resume" in p.stdout, p.stdout + p.stderr
    run(["--resume", out])
    assert [r["epoch"] for r in read_metrics(os.path.join(out, "metrics.jsonl"))] == [1, 2]


# -- an interrupted --overwrite ---------------------------------------------------------------------------------
def test_an_interrupted_overwrite_is_recognised_and_says_how_to_go_on(data, tmp_path):
    out = str(tmp_path / "run")
    run(["--data-dir", data, "--out-dir", out, "--epochs", "1"] + SMALL)
    p = run(["--", "--data-dir", data, "--out-dir", out, "--epochs", "1", "--overwrite"] + SMALL,
            cmd=DRIVER + ["kill-clear"], check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert ".replacing" in os.listdir(out) and "best.npz" in os.listdir(out) and "latest.npz" not in os.listdir(out)
    one_line(run(["--data-dir", data, "--out-dir", out, "--epochs", "1"] + SMALL, check=False),
             "what is left of a run that --overwrite was deleting", "run again with --overwrite")
    one_line(run(["--resume", out], check=False), "was being replaced by --overwrite", "again with --overwrite")
    evaluate = [sys.executable, os.path.join(REPO, "scripts", "evaluate.py")]
    one_line(run([os.path.join(out, "best.npz"), "--data-dir", data], cmd=evaluate, check=False),
             "what is left of a run that an interrupted --overwrite was deleting")
    run(["--data-dir", data, "--out-dir", out, "--epochs", "1", "--overwrite"] + SMALL)
    assert sorted(os.listdir(out)) == ["best.npz", "config.json", "latest.npz", "metrics.jsonl"]
