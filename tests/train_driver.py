"""scripts/train.py with a fault injected, for the tests: ``python tests/train_driver.py FAULT -- ARGS``.

FAULT is one of
  none              run as scripts/train.py does
  step:N:SIGNAME    deliver SIGNAME to this process after global training step N (a callback of the loop);
  step:N:SIGNAME:R  the same in MPI rank R only (the other ranks run on)
  write:N           SIGKILL in the middle of the N-th file write: half its bytes are written, nothing replaced
  replace:N         SIGKILL right after the N-th file write became visible, before anything else happens
  raise:N:R         raise an error in MPI rank R after global step N (a bug in one process)
The faults come from outside the loop: a callback, and a wrapper of npvit.runfiles._replace.
"""
import os
import signal
import sys

from npvit import runfiles, train_cli


def main():
    fault, sep, args = sys.argv[1], sys.argv[2], sys.argv[3:]
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

        def replace(tmp, path):
            count[0] += 1
            if count[0] == target and kind == "write":
                os.truncate(tmp, os.path.getsize(tmp) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            real(tmp, path)
            if count[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)

        runfiles._replace = replace
    else:
        assert kind == "none", fault
    sys.exit(train_cli.main(args, callbacks=callbacks))


if __name__ == "__main__":
    main()
