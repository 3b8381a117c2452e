"""Training a ViT: a run set up in reading order, then the epoch loop as a list of steps.

    train(settings) checks everything before the first write (start), builds the parts (build),
                    then runs the epochs (Trainer.fit) in the run directory it holds locked
    Trainer         one epoch at a time: for each step the learning rate, the batch, the step, the
                    moving average, the totals; after each epoch the evaluation, metrics.jsonl and
                    the checkpoints

The parts live where their one job is, beside this file in npvit/training/: the step math in
step.py, the batch stream and its named random streams in batches.py, the run state and the
resume rules in runstate.py, what the terminal shows in console.py, the settings and recipes in
settings.py; the schedule beside the optimiser in npvit/optim.py; the command line in
npvit/cli/train.py. Every write is atomic, and every random draw comes from (seed, epoch, step),
so a run killed at any instant and resumed continues bit for bit as if it had never stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import time

import numpy as np

from .. import augment as aug
from ..backend import get_xp, to_device
from ..data import Dataset
from ..distributed import SingleProcess, check_replicas, check_same_data, check_same_settings, data_checksum
from ..ema import EMA
from ..errors import CheckpointError, ConfigError, Diverged, PeerLost, StartFailed, UserError, error_line
from ..model import ViT
from ..optim import AdamW, lr_at, weight_decay_groups
from ..parallel import DataParallel, default_threads, one_blas_thread, parallelize, threads_warning
from ..resources import check_fits, folder_image_count
from ..runfiles import RunDir, metrics_text, strict_json
from .batches import Batches, Stream, norm_stats, training_data
from .capture import CapturedStep, CudaGraphs
from .console import Console, Progress, StopRequest, epoch_line, start_line
from .settings import Settings
from .runstate import (DeviceTotals, EpochTotals, Resume, RunCheckpoints, RunState, check_resumable, claim_for_resume,
                       init_weights, read_resume, resume_command)
from .step import Evaluation, train_step

LOG_EVERY = 10          # steps between reads of the running loss: progress display and divergence check


# -- starting a run ----------------------------------------------------------------------------------------
def train(settings, resume=None, overwrite=False, console=None, callbacks=(), stop=None, world=None, data=None):
    """Run the training that ``settings`` (a Settings, or the flat dict of a config.json) describe in their
    ``out_dir`` (or continue one: ``resume`` is a run
    directory, a checkpoint file, or a Resume record already read); returns the list of per-epoch metrics.
    ``callbacks``: functions ``f(trainer, epoch, steps_done)`` called after every step, for tests and tools
    that steer a run from outside the loop. ``world``: the processes of an MPI run (npvit/distributed.py).
    ``data``: the images to train on instead of ``settings.dataset``'s: an npvit Dataset, or a pair of torchvision
    dataset objects (train, test), read into arrays once, after the memory check has counted them."""
    world = world or SingleProcess()
    with contextlib.ExitStack() as stack:
        try:
            if not isinstance(settings, Settings):
                settings = Settings.from_dict(settings)
            trainer = start(settings, resume, overwrite, console or Console(speaks=world.rank == 0), world, stack,
                            data)
            failed = None
        except UserError as e:
            failed = e
        # Every rank learns whether any failed to start, so none is left waiting for the others.
        if world.any(failed is not None):
            if world.size == 1:
                raise failed
            raise StartFailed(world.gather(error_line(failed) if failed is not None else None))
        if world.size > 1:              # the ranks agree on every setting and on the data each read, or all stop
            check_same_settings(world, settings.to_dict())
            check_same_data(world, trainer.data_checksum)
        trainer.callbacks, trainer.stop = list(callbacks), stop or StopRequest()
        world.timeout = settings.peer_timeout       # from now on a process that went away stops the run in time
        with trainer.stop:              # from the first write on, Ctrl-C and SIGTERM finish it and save
            try:
                trainer.begin()
                return trainer.fit()
            except PeerLost as e:       # say what the run kept and how to continue it
                e.args = (e.describe(f"; the run stopped: latest.npz in {trainer.run.path} on rank 0's host "
                                     f"(host {world.hosts[0]}) keeps {trainer.checkpoints.saved}; resume with "
                                     f"{resume_command(trainer.run.path, world.size)}"),)
                raise


def start(settings: Settings, resume, overwrite, console, world, stack, data=None):
    """Everything before the first write: checks, the run directory (rank 0 alone, locked for the run's
    length through ``stack``), then the parts. Returns the Trainer (``clears_first``: --overwrite is to clear
    the directory's old run when it begins)."""
    try:
        get_xp(settings.backend)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if world.size > 1 and settings.backend != "numpy":
        raise ConfigError("training on several processes runs on the numpy backend (GPUs would need NCCL)")
    if settings.memory_check:                                           # before anything is allocated
        check_memory(settings, world, None if data is None else image_counts(data))
    if resume is not None and not isinstance(resume, Resume):
        resume = read_resume(resume)
    if resume is not None:
        check_resumable(resume, settings.model, world.size)
    clear = False
    if world.rank == 0:                 # rank 0 alone owns the run directory; the others write nothing there
        run = stack.enter_context(RunDir(settings.out_dir))
        if resume is not None:
            same_dir, clear = claim_for_resume(run, resume.path, overwrite)
            resume = resume._replace(same_dir=same_dir)
        else:
            clear = run.claim_fresh(overwrite)
    else:
        run = RunDir(settings.out_dir)
    trainer = build(settings, resume, run, console, world, data)          # nothing written yet
    trainer.clears_first = clear
    return trainer


def check_memory(settings, world, counts=None):
    """Refuse, in one line, a run whose estimated memory exceeds what this machine (or GPU) has."""
    threads = settings.threads
    if threads == "auto":
        threads = max(1, default_threads() // world.local_size) if settings.backend == "numpy" else 1
    if counts is None:                                  # the images the run will hold: given, or its dataset's
        counts = (50_000, 10_000) if settings.dataset == "cifar10" else folder_image_count(settings.data_dir)
    refusal = check_fits(settings, threads, *counts)
    if refusal:
        raise ConfigError(refusal)


def image_counts(data):
    """(training images, test images) of data handed to ``train``: an npvit Dataset or a (train, test) pair."""
    return (len(data.x_train), len(data.x_test)) if isinstance(data, Dataset) else tuple(map(len, data))


@contextlib.contextmanager
def naming(what):
    """Weights that do not fit the model (a shape, a missing or an extra array) as one line naming ``what``."""
    try:
        yield
    except ValueError as e:
        raise CheckpointError(f"{what}: {e}") from None


def resume_into(resume, model, opt):
    """Load a resumed run's weights and optimiser state; its RunState."""
    ckpt = resume.checkpoint
    with naming(f"checkpoint {resume.path}"):
        model.load_state_dict(ckpt.params)
        opt.load_state_dict(ckpt.optim)
        state = RunState.from_meta(ckpt.meta)
    if not resume.same_dir:             # best.npz stays with the run it came from
        state.best_acc = -1.0
    return state


def build(s: Settings, resume, run, console, world, given=None):
    """The parts of a run, in reading order: data, model, optimiser, state (resumed or new), moving average,
    the batch stream and the evaluation set on the model's device, the model on its CPU threads."""
    data = training_data(s.data, s.model, given)
    checksum = data_checksum(data.x_train, data.y_train, data.x_test, data.y_test) if world.size > 1 else None
    mean, std = norm_stats(s.normalize, data)
    xp = get_xp(s.backend)
    kernels = "capturable" if s.cuda_graph and s.kernels == "auto" else s.kernels
    model = ViT(s.model, backend=s.backend, dtype=s.dtype, seed=s.seed, kernels=kernels, init=s.init)
    groups = weight_decay_groups(model.parameters(), s.weight_decay) if s.decay == "matrices" else None
    opt = AdamW(model, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, param_groups=groups)
    state = RunState(processes=world.size)
    if resume is not None:
        state = resume_into(resume, model, opt)
    elif s.init_from:
        with naming(f"--init-from {s.init_from}"):
            model.load_state_dict(init_weights(s.init_from, s.model))
    # The moving average of the weights, if kept: it starts at the weights the run starts from, or continues
    # the resumed run's own.
    ema = EMA(model, s.ema) if s.ema else None
    if ema is not None and resume is not None and resume.checkpoint.averaged:
        with naming(f"checkpoint {resume.path}"):
            ema.load(resume.checkpoint.averaged, state.ema_updates or 0)
    state.ema_updates = None if ema is None else ema.updates
    # The data goes to the device once; batches are gathered, normalised and augmented there.
    threads = s.threads
    if threads == "auto" and world.size > 1:         # the cores of a machine shared by its ranks
        threads = max(1, default_threads() // world.local_size)
    net = parallelize(model, threads)               # the model, or it on several CPU threads
    norm = aug.normalizer(xp, mean, std, model.dtype)
    batches = Batches(to_device(data.x_train, xp), to_device(data.y_train, xp), s.batch_size, s.seed,
                      s.augmentation, norm, model.dtype, world,
                      parallel=net if isinstance(net, DataParallel) else None)   # augmented on its threads too
    plan = s.evaluation
    evaluation = Evaluation(data.x_test, data.y_test, norm, plan.batch_size, plan.tta_flip, world, xp)
    checkpoints = RunCheckpoints(run, net, opt, ema, state, {"classes": list(data.classes), "mean": mean, "std": std},
                                 s.to_dict(), writer=world.rank == 0)
    trainer = Trainer(s, net, opt, ema, batches, evaluation, run, state, checkpoints, resume, console, world)
    trainer.data_checksum = checksum                # what the ranks compare before the first write
    if s.cuda_graph:                                # each step captured once and replayed (capture.py)
        trainer.captured = CapturedStep(model.draw_on_device(), opt, ema, s.step_rule, CudaGraphs(xp))
    return trainer


# -- the run --------------------------------------------------------------------------------------------------
class Trainer:
    """One training run in its (locked) run directory, from its parts: ``net`` is the model or the model in
    an execution strategy (DataParallel), and everything of the model is asked of it."""

    def __init__(self, settings: Settings, net, opt, ema, batches, evaluation, run, state, checkpoints, resume,
                 console, world):
        self.settings, self.net, self.opt, self.ema, self.batches = settings, net, opt, ema, batches
        self.schedule, self.plan, self.rule = settings.lr_schedule, settings.evaluation, settings.step_rule
        self.epochs = settings.epochs
        self.evaluation, self.run, self.state, self.checkpoints = evaluation, run, state, checkpoints
        self.resume, self.console, self.world = resume, console, world
        self.writer = world.rank == 0                       # rank 0 alone writes files
        self.callbacks, self.stop = [], StopRequest()
        self.clears_first = False                           # --overwrite: clear the old run at begin()
        self.data_checksum = None
        self.captured = None                                # a CapturedStep with --cuda-graph

    @property
    def steps(self):
        return self.batches.steps

    def begin(self):
        """The run's first writes: a fresh run's initial checkpoint (so --resume always finds one), or a
        resumed run's metrics.jsonl rewritten from its checkpoint (each epoch once); config.json. With
        --overwrite the old run goes first, only now that the new one can start."""
        if self.clears_first:
            self.run.clear()
        if self.resume is not None:
            if self.writer:
                self.run.write_text("metrics.jsonl", metrics_text(self.state.history))
            self.console.log(f"resuming from {self.resume.path}: epoch {self.state.epoch + 1}, step {self.state.step}"
                             + ("" if self.resume.same_dir else f", into {self.run.path}"))
        else:
            self.checkpoints.save("latest.npz")
        if self.writer:
            self.run.write_text("config.json", json.dumps(strict_json(self.settings.to_dict()), indent=2,
                                                          allow_nan=False) + "\n")
        self.note_settings()

    def note_settings(self):
        s = self.schedule
        if s.warmup_epochs >= s.epochs:
            self.console.log(f"note: warmup ({s.warmup_epochs} epochs) lasts the whole run of {s.epochs}: "
                             f"the learning rate never reaches {s.lr}; set --warmup-epochs to change that")
        if threads_warning(self.settings.threads):
            self.console.note(threads_warning(self.settings.threads))
        self.console.log(start_line(self.settings, self.net, self.batches.size, self.evaluation.total, self.steps, self.world.size,
                                    self.run.path))

    def fit(self):
        """Train from the current state to the last epoch, or until a stop is requested; the history."""
        state = self.state
        if state.epoch >= self.epochs:
            self.console.log(f"nothing to do: this run already finished {state.epoch} epochs; "
                             f"pass --epochs to train longer")
        self.net.train()
        self.stop.note = self.console.err
        # A diverging run overflows; the loop reports that itself (diverged), so NumPy's warnings would be noise.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), one_blas_thread(self.net):
            for epoch in range(state.epoch, self.epochs):
                finished, totals, lr = self.train_epoch(epoch)
                if finished:
                    self.end_of_epoch(epoch, totals, lr)
                if self.stop.requested:
                    if not finished:                            # train_epoch set state.step
                        state.partial = totals
                        self.checkpoints.save("latest.npz")
                    where = f"at epoch {epoch + 1} step {state.step}" if not finished else f"after epoch {epoch + 1}"
                    self.console.log(f"saved {self.run.file('latest.npz')} {where}; resume with "
                                     f"{resume_command(self.run.path, self.world.size)}")
                    break
        return state.history

    def train_epoch(self, epoch):
        """The steps of one epoch from where the state stands: (finished, the epoch's totals, last lr).
        Unfinished: a stop was requested; ``state.step`` then says how far it went."""
        state, steps, rule = self.state, self.steps, self.rule
        resuming = epoch == state.epoch
        start = state.step if resuming else 0
        before = state.partial if resuming and state.partial is not None else EpochTotals()
        if self.settings.patch_dropout_final is not None:                 # the rate of this epoch
            self.net.set_patch_dropout(self.settings.patch_dropout_at(epoch))
        order = self.batches.order(epoch)
        progress = Progress(self.settings.progress, steps, start, epoch, self.epochs, self.console.err)
        running = DeviceTotals(self.batches.xp)
        lr, self.unchecked_from = self.schedule.lr, start
        try:
            for i in range(start, steps):
                lr = lr_at(self.schedule, epoch * steps + i, steps)           # the learning rate of this step
                self.opt.set_lr(lr)
                self.world.where = f"at step {i + 1} of epoch {epoch + 1}"      # for a message if one goes away
                x, target, labels, n = self.batches.batch(order, epoch, i)    # this rank's rows, augmented
                seed = self.batches.seed(epoch, i, Stream.DROPOUT)              # dropout masks from (seed, epoch, i)
                if self.captured is not None:                                   # the step and the average, replayed
                    loss, correct = self.captured(x, target, labels, seed)
                else:
                    self.net.reseed(seed)
                    loss, correct = train_step(self.net, self.opt, x, target, labels, rule.label_smoothing,
                                               rule.grad_clip, rule.micro_batch, global_batch=n,
                                               reduce_grads=self.world.allreduce_ if self.world.size > 1 else None)
                    if self.ema is not None:
                        self.ema.update()
                running.add(loss * len(labels), correct, n)
                progress.step()
                if i % LOG_EVERY == LOG_EVERY - 1 or i == steps - 1:
                    self.check_running(epoch, i + 1, before, running, lr, progress)
                every = self.settings.check_replicas
                if every and (epoch * steps + i + 1) % every == 0:
                    check_replicas(self.world, self.net.flat.params, epoch, i + 1)
                for callback in self.callbacks:
                    callback(self, epoch, i + 1)
                if self.world.any(self.stop.requested) and i < steps - 1:   # every rank stops at this step
                    self.stop.requested, state.step = True, i + 1
                    return False, running.since(before, self.world), lr
        finally:
            progress.close()
        return True, running.since(before, self.world), lr

    def check_running(self, epoch, done, before, running, lr, progress):
        """One read-back per LOG_EVERY steps (summed over the ranks): the running loss shows progress and catches
        divergence, on every rank at the same step."""
        loss_sum, correct = running.read(self.world)
        seen = before.seen + running.seen
        loss = (before.loss_sum + loss_sum) / seen
        if not math.isfinite(loss):
            raise self.diverged(epoch, self.unchecked_from, done, loss, lr)
        self.unchecked_from = done
        progress.show(done, loss, (before.correct + correct) / seen, running.seen / (time.perf_counter() - running.t0),
                      lr)

    def end_of_epoch(self, epoch, totals, lr):
        """Evaluate, save best.npz and latest.npz, then record the epoch in metrics.jsonl, in that order: a
        crash between any two of these writes resumes from latest.npz and rewrites the rest identically, and
        metrics.jsonl never lists an epoch that latest.npz does not hold (but with --save-every N > 1, whose
        epochs between saves are done again on resume)."""
        state = self.state
        record = {"epoch": epoch + 1, "train_loss": totals.loss_sum / totals.seen,
                  "train_acc": totals.correct / totals.seen, "lr": lr, "seconds": totals.seconds,
                  "images_per_s": totals.seen / totals.seconds}
        if self.settings.patch_dropout_final is not None:
            record["patch_dropout"] = self.settings.patch_dropout_at(epoch)
        if self.plan.due(epoch, self.epochs):
            self.world.where = f"in the evaluation after epoch {epoch + 1}"
            record.update(self.score_epoch())
        state.history.append(strict_json(record))
        state.epoch, state.step, state.partial = epoch + 1, 0, None
        acc = record.get("val_acc", record.get("test_acc", -1.0))
        if acc > state.best_acc:
            state.best_acc = acc
            self.checkpoints.save("best.npz")
        if (epoch + 1) % self.settings.save_every == 0 or epoch + 1 == self.epochs or self.stop.requested:
            self.checkpoints.save("latest.npz")
        if self.writer:                     # after the checkpoint that holds the epoch (with --save-every 1)
            self.run.write_text("metrics.jsonl", metrics_text(state.history))
        self.console.log(epoch_line(record, self.epochs))

    def score_epoch(self):
        """The evaluation of an epoch: loss and accuracy on the held-out or test images (of the moving
        average where the run keeps one, and with --eval-raw of the raw weights too), and its seconds."""
        split = self.plan.split                                 # held-out training images, or the test set
        t0, out = time.perf_counter(), {}
        if self.plan.raw:
            out[f"raw_{split}_loss"], out[f"raw_{split}_acc"] = self.evaluation.score(self.net)
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            out[f"{split}_loss"], out[f"{split}_acc"] = self.evaluation.score(self.net)
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    def diverged(self, epoch, first, last, loss, lr):
        steps = f"step {last}" if last - first <= 1 else f"steps {first + 1}-{last}"
        return Diverged(f"training diverged in epoch {epoch + 1}, {steps} of {self.steps}: the running loss "
                        f"is {loss} (learning rate {lr:.3g}). The learning rate is the likely cause: lower --lr, "
                        f"or add --warmup-epochs or --grad-clip. {self.checkpoints.kept()}")

