"""scripts/train.py with a fault injected, for the tests: ``python tests/train_driver.py FAULT -- ARGS``.

FAULT is one of
  none              run as scripts/train.py does
  step:N:SIGNAME    deliver SIGNAME to this process after global training step N (a callback of the loop);
  step:N:SIGNAME:R  the same in MPI rank R only (the other ranks run on)
  write:N           SIGKILL in the middle of the N-th file write: half its bytes are written, nothing replaced
  replace:N         SIGKILL right after the N-th file write became visible, before anything else happens
  raise:N:R         raise an error in MPI rank R after global step N (a bug in one process)
  oserror:N:ERRNO   the N-th file write fails as the system would (ENOSPC: disk full, EROFS, EDQUOT, EIO, ...)
  sigint-write:N    Ctrl-C (SIGINT) arrives in the middle of the N-th file write
  shell:N:R         MPI rank R alone runs the shell command $NPVIT_TEST_SHELL after global step N (in its own
                    host's namespaces: `ip link set ... down` cuts its host's link), then trains on
  perturb:N:R       MPI rank R alone nudges its weights after global step N (replicas that drift apart)
  kill-clear        SIGKILL while --overwrite deletes the old run, after its first file is gone
  rmtree:N          the run directory is deleted (by someone else) after global step N
  reuse:N           after global step N the run directory is deleted and another run (the same arguments with
                    --seed 99) trains to its end in the same path; the names and SHA-256 of that run's files
                    are written as JSON to the file $NPVIT_TEST_SNAPSHOT
  rename:N          the run directory is renamed to <dir>-moved after global step N
The faults come from outside the loop: a callback, and wrappers of npvit.runfiles' functions.
With NPVIT_TEST_STDERR=R:PATH, MPI rank R writes its stderr to PATH (on its own host) instead of the launcher's
pipe: what a rank says where the launcher cannot forward it (its link cut) can still be read.
"""
import errno
import os
import signal
import sys

from npvit import runfiles
from npvit.cli import run


def main():
    fault, sep, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if os.environ.get("NPVIT_TEST_STDERR"):
        rank, path = os.environ["NPVIT_TEST_STDERR"].split(":", 1)
        if os.environ.get("PMI_RANK") == rank:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
    assert sep == "--", "usage: train_driver.py FAULT -- ARGS"
    kind, *spec = fault.split(":")
    callbacks = []
    if kind == "step":
        at, name = int(spec[0]), spec[1]
        only = int(spec[2]) if len(spec) > 2 else None

        def deliver(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at and only in (None, trainer.world.rank):
                os.kill(os.getpid(), getattr(signal, name))

        callbacks.append(deliver)
    elif kind == "raise":
        at, only = int(spec[0]), int(spec[1])

        def fail(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at and trainer.world.rank == only:
                raise RuntimeError(f"injected failure in rank {only}")

        callbacks.append(fail)
    elif kind in ("write", "replace"):
        target, count, real = int(spec[0]), [0], runfiles._replace

        def replace(tmp, path, dir_fd=None):
            count[0] += 1
            if count[0] == target and kind == "write":
                fd = os.open(tmp, os.O_WRONLY, dir_fd=dir_fd)
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            real(tmp, path, dir_fd)
            if count[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)

        runfiles._replace = replace
    elif kind == "oserror":
        target, code, count, real_fsync = int(spec[0]), getattr(errno, spec[1]), [0], runfiles.os.fsync

        def fsync(fd):                      # atomic_write flushes every file it writes: fail the N-th
            import stat
            if stat.S_ISREG(os.fstat(fd).st_mode):          # (not the directory's own fsync after a rename)
                count[0] += 1
                if count[0] == target:
                    raise OSError(code, os.strerror(code))
            real_fsync(fd)

        runfiles.os.fsync = fsync
    elif kind == "sigint-write":
        target, count, real = int(spec[0]), [0], runfiles._replace

        def replace(tmp, path, dir_fd=None):
            count[0] += 1
            if count[0] == target:
                os.kill(os.getpid(), signal.SIGINT)
            real(tmp, path, dir_fd)

        runfiles._replace = replace
    elif kind == "rmtree":
        import shutil
        at = int(spec[0])

        def vanish(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at:
                shutil.rmtree(trainer.run.path)

        callbacks.append(vanish)
    elif kind == "shell":
        import subprocess
        at, only = int(spec[0]), int(spec[1])

        def shell(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at and trainer.world.rank == only:
                subprocess.run(os.environ["NPVIT_TEST_SHELL"], shell=True, check=True)

        callbacks.append(shell)
    elif kind == "perturb":
        at, only = int(spec[0]), int(spec[1])

        def nudge(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at and trainer.world.rank == only:
                trainer.net.flat.params[0] += 1e-3

        callbacks.append(nudge)
    elif kind == "reuse":
        import hashlib
        import json
        import shutil
        import subprocess
        at = int(spec[0])

        def reuse(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at:
                path = trainer.run.path
                shutil.rmtree(path)
                script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                                      "train.py")
                subprocess.run([sys.executable, script, *args, "--seed", "99"], check=True, capture_output=True)
                files = {n: hashlib.sha256(open(os.path.join(path, n), "rb").read()).hexdigest()
                         for n in sorted(os.listdir(path))}
                with open(os.environ["NPVIT_TEST_SNAPSHOT"], "w") as f:
                    json.dump(files, f)

        callbacks.append(reuse)
    elif kind == "rename":
        at = int(spec[0])

        def rename(trainer, epoch, steps_done):
            if epoch * trainer.steps + steps_done == at:
                os.rename(trainer.run.path, trainer.run.path + "-moved")

        callbacks.append(rename)
    elif kind == "kill-clear":
        real_remove = runfiles.os.remove

        def remove(path, **kw):
            real_remove(path, **kw)
            if os.path.basename(path) in runfiles.RUN_FILES:
                os.kill(os.getpid(), signal.SIGKILL)

        runfiles.os.remove = remove
    else:
        assert kind == "none", fault
    sys.exit(run("train", args, callbacks=callbacks))


if __name__ == "__main__":
    main()
