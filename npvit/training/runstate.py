"""A training run's state, and the checkpoints that hold it: written in one place, read once on resume.

The state is one record (:class:`RunState`): how far the run is (epoch, step), the running totals
of an unfinished epoch, the best accuracy so far (for best.npz), the history that metrics.jsonl is
rewritten from, the moving average's update count, and the number of processes that wrote it.
A checkpoint holds it beside the weights, the optimiser state and the moving average, so a run
killed at any instant continues from ``latest.npz`` bit for bit.

The rules of resuming and starting from weights are here too: which file ``--resume`` means, that
a checkpoint must be of the run's model, and in which directory a resumed run may continue.
"""
from __future__ import annotations

import os
from collections import namedtuple
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import time

from ..backend import to_host_scalar
from ..checkpoint import Checkpoint, check_finite, checkpoint_arrays, evaluated_weights, npz_writer, read_checkpoint
from ..errors import CheckpointError, Diverged, RunDirError, WriteError
from ..runfiles import contents, half_replaced, strict_json


class EpochTotals(namedtuple("EpochTotals", "loss_sum correct seen seconds", defaults=(0.0, 0, 0, 0.0))):
    """The running totals of an epoch: summed loss, correct answers, images seen, seconds of training."""

    def plus(self, loss_sum, correct, seen, seconds):
        return EpochTotals(self.loss_sum + loss_sum, self.correct + int(correct), self.seen + seen,
                           self.seconds + seconds)

    def to_json(self):
        return dict(self._asdict())


@dataclass
class RunState:
    """Where a run stands; the ``train`` entry of a checkpoint's metadata, plus the history."""
    epoch: int = 0                              # epochs finished
    step: int = 0                               # steps done of epoch ``epoch`` (0 at an epoch's boundary)
    best_acc: float = -1.0                      # the best evaluation accuracy so far, held by best.npz
    partial: Optional[EpochTotals] = None       # the unfinished epoch's totals when step > 0
    history: list = field(default_factory=list)  # one record per finished epoch (metrics.jsonl)
    ema_updates: Optional[int] = None           # the moving average's updates (None: the run keeps none)
    processes: int = 1                          # the MPI processes that trained it

    def train_meta(self) -> dict:
        meta = {"epoch": self.epoch, "step": self.step, "best_acc": self.best_acc,
                "partial": self.partial.to_json() if self.partial is not None else None,
                "processes": self.processes}
        if self.ema_updates is not None:
            meta["ema_updates"] = self.ema_updates
        return meta

    @classmethod
    def from_meta(cls, meta) -> "RunState":
        train = meta["train"]
        partial = train.get("partial")
        return cls(epoch=train["epoch"], step=train["step"], best_acc=train["best_acc"],
                   partial=EpochTotals(**partial) if partial else None, history=list(meta.get("history", [])),
                   ema_updates=train.get("ema_updates"), processes=train.get("processes", 1))

    def describe_saved(self):
        """Where latest.npz stands, in words ("epoch 3, step 40", or "the initial weights")."""
        if not (self.epoch or self.step):
            return "the initial weights"
        return f"epoch {self.epoch}" + (f", step {self.step}" if self.step else "")


class DeviceTotals:
    """An epoch's running loss sum and correct count on the model's device (read back every few steps)."""

    def __init__(self, xp):
        self.loss_sum, self.correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
        self.seen, self.t0 = 0, time.perf_counter()

    def add(self, loss_sum, correct, seen):
        self.loss_sum += loss_sum
        self.correct += correct
        self.seen += seen

    def read(self, world):
        """(loss sum, correct) summed over the ranks, as host numbers: one read-back."""
        return world.sum([to_host_scalar(self.loss_sum), to_host_scalar(self.correct)])

    def since(self, before: EpochTotals, world) -> EpochTotals:
        """The epoch's totals: ``before`` (what a checkpoint held) plus these, summed over the ranks."""
        loss_sum, correct = self.read(world)
        return before.plus(loss_sum, correct, self.seen, time.perf_counter() - self.t0)


class RunCheckpoints:
    """A run's checkpoints in its directory: ``save(name)`` writes the state as it stands now (weights,
    optimiser state, moving average, the run state and history, the run's settings (``train_config``: the flat
    dict of config.json), and the data's classes and normalisation), on rank 0 only; ``kept()`` says where
    latest.npz stands."""

    def __init__(self, run, net, opt, ema, state: RunState, data_meta, train_config, writer=True):
        self.run, self.net, self.opt, self.ema, self.state = run, net, opt, ema, state
        self.data_meta, self.train_config, self.writer = data_meta, train_config, writer
        self.saved = state.describe_saved()

    def save(self, name):
        """Write checkpoint ``name``; its weights must be finite (a diverged model is never saved)."""
        xp, state = self.net.xp, self.state
        bad = [k for k, p in self.net.parameters().items() if not bool(xp.isfinite(p).all())]
        if bad:
            raise Diverged(f"the weights became non-finite (in {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})"
                           f" before {state.describe_saved()} could be saved; {self.kept()}")
        if self.ema is not None:
            state.ema_updates = self.ema.updates
        if self.writer:
            meta = {**self.data_meta, "train": state.train_meta(), "history": state.history,
                    "train_config": self.train_config}
            try:
                arrays = checkpoint_arrays(self.net, self.opt, meta=strict_json(meta),
                                           averaged=self.ema.averaged_params() if self.ema is not None else None)
                self.run.write(name, npz_writer(arrays))
            except WriteError as e:
                kept = f" ({self.saved})" if name == "latest.npz" and "intact" in str(e) else ""
                then = (f"continue with {resume_command(self.run.path, state.processes)}"
                        if os.path.isfile(self.run.file("latest.npz")) else "start the run again (nothing was saved yet)")
                raise WriteError(f"{e}{kept}; once the cause is fixed, {then}", e.errno) from None
        if name == "latest.npz":
            self.saved = state.describe_saved()

    def kept(self):
        return f"{self.run.file('latest.npz')} keeps the last finite state ({self.saved})"


def resume_command(path, processes=1):
    """How to continue the run in ``path``: --resume, on as many MPI processes as wrote it."""
    if processes > 1:
        return f"mpiexec -n {processes} ... --resume {path} (the same {processes} processes)"
    return f"--resume {path}"


# -- resuming and starting from weights -----------------------------------------------------------------
class Resume(NamedTuple):
    """A checkpoint to resume, read once: its path, the record, and whether the run continues in the
    directory it came from (else it branches into a new one)."""
    path: str
    checkpoint: Checkpoint
    same_dir: bool = True


def resume_source(path):
    """``--resume PATH``: a run directory (its latest.npz) or a checkpoint file -> (checkpoint, its directory)."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    if half_replaced(folder):
        raise CheckpointError(f"{folder} was being replaced by --overwrite when that was interrupted: what is left "
                              f"there is not a run to continue; start the new run again with --overwrite")
    if os.path.isdir(path):
        latest = os.path.join(path, "latest.npz")
        if not os.path.isfile(latest):
            raise CheckpointError(f"{path} holds no checkpoint (latest.npz): the run stopped before its first "
                                  f"save, or this is not a run directory; start the run again without --resume")
        return latest, path
    return path, os.path.dirname(path) or "."


def read_resume(path) -> Resume:
    """The checkpoint ``--resume PATH`` names, read once; it must hold a training state."""
    ckpt_path, _ = resume_source(path)
    ckpt = read_checkpoint(ckpt_path)
    if "train" not in ckpt.meta or not ckpt.optim or not isinstance(ckpt.meta.get("train_config"), dict):
        raise CheckpointError(f"checkpoint {ckpt_path} has no training state (it is a model-only checkpoint); "
                              f"start a new run from its weights with --init-from {ckpt_path}")
    return Resume(ckpt_path, ckpt)


# The model keys that act in training only (or only at initialisation): weights made with other values of these
# compute the same function, so --init-from may start a run with its own (fine-tuning with patch dropout, say).
TRAINING_ONLY = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "patch_dropout",
                 "initializer_range", "use_faster_attention")


def check_model(ckpt: Checkpoint, config, path, what, ignore=()):
    """Refuse a checkpoint of another model than ``config`` (a ViTConfig; the keys in ``ignore`` may differ),
    or with non-finite weights."""
    diff = {k: (v, getattr(config, k)) for k, v in ckpt.config.to_dict().items()
            if getattr(config, k) != v and k not in ignore}
    if diff:
        raise CheckpointError(f"{what} is for another model: (file, requested) differ in {diff}")
    check_finite(ckpt.params, path)
    check_finite(ckpt.averaged, path)


def check_resumable(resume: Resume, config, processes):
    """Refuse to resume a checkpoint of another model, or one written by another number of processes."""
    check_model(resume.checkpoint, config, resume.path, f"checkpoint {resume.path}")
    wrote = resume.checkpoint.meta["train"].get("processes", 1)
    if wrote != processes:
        raise CheckpointError(f"checkpoint {resume.path} was written by a run on {wrote} process(es); resume it on "
                              f"as many (mpirun -np {wrote} ...), this is {processes}: each process's augmentation "
                              f"and dropout draw their own streams, so another count would not continue the same run")


def init_weights(path, config):
    """The weights of --init-from, which must be of the model ``config`` (its dropouts, patch dropout and
    stochastic depth aside: they act in training only): the ones its run evaluated (their moving average where it
    kept one, --ema). A transformers model directory will do (npvit/interop.py)."""
    ckpt = read_checkpoint(path, config)          # a .safetensors saved outside npvit: the run's model
    check_model(ckpt, config, path, f"--init-from {path}", ignore=TRAINING_ONLY)
    return evaluated_weights(ckpt.params, ckpt.averaged)


def claim_for_resume(run, ckpt, overwrite):
    """May the run of checkpoint ``ckpt`` continue in ``run``'s directory? Returns (same_dir: it is the
    checkpoint's own directory, else a branch into another; clear: that other directory's run is to go)."""
    source_dir = os.path.dirname(os.path.abspath(ckpt))
    if os.path.realpath(source_dir) == os.path.realpath(run.path):
        latest = run.file("latest.npz")
        if os.path.basename(ckpt) != "latest.npz" and os.path.isfile(latest) and not overwrite:
            raise RunDirError(f"resuming from {ckpt} in its own directory would replace {latest}, that run's latest "
                              f"state: continue it with --resume {run.path}, branch off with --out-dir NEW_DIR, "
                              f"or pass --overwrite")
        return True, False
    found = contents(run.path)
    if found and not overwrite:
        raise RunDirError(f"{run.path} already holds files ({', '.join(found[:5])}): resuming {ckpt} there would mix "
                          f"two runs; choose an empty or new --out-dir, or pass --overwrite to replace them")
    return False, bool(found)
