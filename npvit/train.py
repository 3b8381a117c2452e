"""Training on CIFAR-10 (or a folder of images): the loop, its run directory, checkpoints, resume.

The loop comes in parts: :class:`Trainer` sets a run up, runs one epoch at a time
(:meth:`Trainer.train_epoch`) and closes each (:meth:`Trainer.end_of_epoch`: evaluation,
metrics, checkpoints). The options and recipes are in npvit/options.py; the run
directory's rules (one run per directory, a lock, atomic writes) in npvit/runfiles.py.
``scripts/train.py`` and ``npvit train`` are thin wrappers around :func:`main`.

Randomness of every step (shuffle, augmentation, dropout masks) is derived from
(seed, epoch, step), and everything a run writes is written atomically, with the
checkpoint as the one record that metrics.jsonl is rewritten from. So a run killed at
any instant and resumed continues bit for bit as if it had never stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time

import numpy as np

from . import augment as aug
from .backend import default_rng, get_xp, seed_for, to_device, to_host_scalar
from .checkpoint import check_finite, evaluated_weights, read_checkpoint, save_checkpoint
from .cli import SafeStream, run_main
from .config import ViTConfig
from .data import Dataset, load_dataset
from .distributed import SingleProcess, get_world, shard
from .ema import EMA
from .evaluate import predict_logits
from .errors import CheckpointError, ConfigError, DataError, Diverged, RunDirError, StartFailed, UserError
from .losses import softmax_cross_entropy
from .ops import kernels_name
from .model import ViT
from .optim import AdamW, clip_grad_norm, weight_decay_groups
from .options import (ALL_KEYS, MODEL_KEYS, OPTIONS, RECIPES, TRAIN_DEFAULTS, build_config, default_text,  # noqa: F401
                      validate)
from .parallel import default_threads, one_blas_thread, parallelize, threads_arg, threads_warning
from .runfiles import RunDir, contents, strict_json, write_metrics, atomic_write_text
from .trivial_augment import trivial_augment

LOG_EVERY = 10          # steps between reads of the running loss: progress display and divergence check
PLAIN_PROGRESS_S = 30   # seconds between progress lines when stderr is not a terminal


def lr_at(cfg, step, steps_per_epoch):
    """Linear warmup from 0 over ``warmup_epochs``, then constant, or cosine or linear decay to zero at the end."""
    total = cfg["epochs"] * steps_per_epoch
    warmup = cfg["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        return cfg["lr"] * (step + 1) / warmup
    if cfg["schedule"] == "constant":
        return cfg["lr"]
    progress = (step - warmup) / max(total - warmup, 1)
    if cfg["schedule"] == "linear":
        return cfg["lr"] * (1.0 - progress)
    return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- data -------------------------------------------------------------------------
def load_data(cfg):
    try:
        data = load_dataset(cfg["dataset"], cfg["data_dir"], cfg["image_size"], cfg["num_channels"],
                            cfg["download"])
    except DataError as e:
        if cfg["dataset"] == "cifar10" and not cfg["download"] and "not found" in str(e):
            raise DataError(f"{e} (or drop --no-download to download it there)") from None
        raise
    if data.x_train.shape[1:] != (cfg["num_channels"], cfg["image_size"], cfg["image_size"]):
        raise ConfigError(f"the data's images are {data.x_train.shape[1:]} (C, H, W) but the model expects "
                          f"num_channels={cfg['num_channels']}, image_size={cfg['image_size']}")
    if len(data.classes) != cfg["num_classes"]:
        raise ConfigError(f"the data has {len(data.classes)} classes but num_classes={cfg['num_classes']}")
    data = data.limit(cfg["train_limit"], cfg["test_limit"])
    n = cfg["val_split"]
    if n:                       # the last n training images become the evaluation set; the test set goes unused
        if n >= len(data.y_train):
            raise ConfigError(f"val_split {n} leaves no training images (there are {len(data.y_train)})")
        data = Dataset(data.x_train[:-n], data.y_train[:-n], data.x_train[-n:], data.y_train[-n:], data.classes)
    return data


def norm_stats(cfg, data):
    if cfg["normalize"] == "half":
        return [0.5] * cfg["num_channels"], [0.5] * cfg["num_channels"]
    return data.channel_stats()


def augment_batch(cfg, images_u8, y, norm, dtype, rng, host_rng):
    """uint8 images (B, C, H, W) and labels y (B,) -> normalised augmented x and targets (labels, or soft
    targets with mixup/cutmix). ``norm``: the (shift, scale) pair of aug.normalizer."""
    if cfg["trivial_augment"]:          # on the pixels, in [0, 1]; then the rest on the normalised images
        pixels = trivial_augment(images_u8.astype(dtype) * dtype.type(1 / 255), rng, prob=cfg["trivial_augment_prob"])
        pixels *= dtype.type(255)
        x = aug.normalize(pixels, *norm, dtype)
    else:
        x = aug.normalize(images_u8, *norm, dtype)
    if cfg["augment"] == "crop_flip":
        x = aug.random_crop(x, cfg["crop_padding"], rng)
    if cfg["augment"] == "article":
        x = aug.random_resized_crop(x, rng, scale=tuple(cfg["rrc_scale"]))
    if cfg["augment"] != "none":
        x = aug.random_flip(x, rng)
    if cfg["mixup"] or cfg["cutmix"]:
        return aug.mixup_cutmix(x, y, cfg["num_classes"], rng, host_rng, cfg["mixup"], cfg["cutmix"])
    return x, y


def train_step(model, opt, x, target, labels, label_smoothing=0.0, grad_clip=0.0, micro_batch=None,
               global_batch=None, reduce_grads=None):
    """One optimiser step on the batch x (B, C, H, W): returns (mean loss, number correct), both on the device.

    With ``micro_batch`` m < B the batch runs through forward and backward in chunks of m,
    the gradients adding up: the same step (the loss is a mean, so each chunk's dlogits is
    weighted by m / B), with activations m/B the size, which keeps them in cache.

    Across processes (npvit/distributed.py) x is this rank's shard of a batch of ``global_batch``
    rows, each chunk weighted by m / global_batch, and ``reduce_grads(flat_grads)`` sums the
    ranks' gradients (one all-reduce) before clipping and the step.
    """
    B = len(labels)
    total = global_batch or B
    m = micro_batch or max(B, 1)
    model.zero_grad()
    loss_sum, correct = 0.0, 0
    for s in range(0, B, m):
        chunk = slice(s, s + m)
        logits = model(x[chunk])
        loss, dlogits = softmax_cross_entropy(logits, target[chunk], label_smoothing, kernels=model.kernels)
        n = len(logits)
        if n != total:
            dlogits *= n / total            # d(mean over the batch)/d(mean over the chunk) = n / total
        model.backward(dlogits)
        loss_sum = loss_sum + loss * n
        correct = correct + (logits.argmax(axis=-1) == labels[chunk]).sum()
    if reduce_grads is not None:
        reduce_grads(model.flat_grads)      # the whole batch's gradient, on every rank
    if grad_clip:
        clip_grad_norm(model.flat_grads, grad_clip)
    opt.step()
    return loss_sum / max(B, 1), correct


# -- evaluation -------------------------------------------------------------------
def evaluate(model, x_u8, y, mean, std, batch_size=500, tta_flip=False):
    """Mean loss and accuracy of ``model`` (eval mode) over uint8 images on its device; returns floats
    and the predictions (on the device). ``tta_flip``: average with the mirror images' probabilities."""
    xp = model.xp
    was_training = model.training
    model.eval()
    loss_sum, preds = 0.0, []
    for i in range(0, len(y), batch_size):
        xb = aug.normalize(x_u8[i:i + batch_size], mean, std, model.dtype)
        logits = predict_logits(model, xb, tta_flip)
        loss, _ = softmax_cross_entropy(logits, y[i:i + batch_size])
        loss_sum = loss_sum + loss * len(xb)
        preds.append(logits.argmax(axis=-1))
    model.train(was_training)
    preds = xp.concatenate(preds)
    return to_host_scalar(loss_sum) / len(y), to_host_scalar((preds == y).mean()), preds


# -- the loop -----------------------------------------------------------------------
class StopRequest:
    """Stop at the next step boundary, save, exit: asked by the first Ctrl-C (SIGINT), SIGTERM, or the
    reader of the output going away. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.reason = None
        self.note = None           # where to say that we are stopping (stderr)

    def __enter__(self):
        self.old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.old:
            signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
        print("\nstopping: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              file=self.note or sys.stderr)

    def request(self, reason):
        self.requested, self.reason = True, reason

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


class Progress:
    """One epoch's progress: a tqdm bar on a terminal; elsewhere (a log file) a plain line every
    PLAIN_PROGRESS_S seconds; nothing with --no-progress."""

    def __init__(self, cfg, steps, start, epoch, stream):
        self.steps, self.stream = steps, stream
        self.bar, self.plain = None, False
        if cfg["progress"] and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{cfg['epochs']}", unit="step",
                            dynamic_ncols=True, leave=False, file=stream)
        elif cfg["progress"]:
            self.plain, self.last = True, time.monotonic()
        self.desc = f"epoch {epoch + 1}/{cfg['epochs']}"

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def show(self, i, loss, acc, ips, lr):
        """At a log point: the running loss and accuracy after ``i`` steps of the epoch."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", ips=f"{ips:.0f}", lr=f"{lr:.2e}",
                                 refresh=False)
        elif self.plain and time.monotonic() - self.last >= PLAIN_PROGRESS_S:
            self.last = time.monotonic()
            print(f"{self.desc} step {i}/{self.steps} | loss {loss:.4f} acc {acc:.3f} | {ips:.0f} img/s | "
                  f"lr {lr:.2e}", file=self.stream)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """One training run in its (locked) run directory: ``t = Trainer(cfg, run, resumed); t.begin(); t.fit()``.

    ``callbacks``: functions ``f(trainer, epoch, steps_done)`` called after every step, for
    tests and tools that steer a run from outside the loop.
    """

    def __init__(self, cfg, run, resumed=None, log=print, callbacks=(), stop=None, err=None, world=None):
        self.world = world or SingleProcess()
        self.writer = self.world.rank == 0                  # rank 0 alone writes files and prints
        self.cfg, self.run, self.callbacks = cfg, run, list(callbacks)
        self.log = log if self.writer else (lambda *a: None)
        self.stop = stop or StopRequest()
        self.err = (err or sys.stderr) if self.writer else open(os.devnull, "w")
        data = load_data(cfg)
        self.mean, self.std = norm_stats(cfg, data)
        self.xp = xp = get_xp(cfg["backend"])
        self.model = ViT({k: cfg[k] for k in MODEL_KEYS}, backend=cfg["backend"], dtype=cfg["dtype"],
                         seed=cfg["seed"], kernels=cfg["kernels"], init=cfg["init"])
        groups = (weight_decay_groups(self.model.parameters(), cfg["weight_decay"]) if cfg["decay"] == "matrices"
                  else None)
        self.opt = AdamW(self.model, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"],
                         param_groups=groups)
        self.state = {"epoch": 0, "step": 0, "best_acc": -1.0, "partial": None}
        self.history = []
        if resumed is not None:
            self.model.load_state_dict(resumed.params)
            self.opt.load_state_dict(resumed.optim)
            self.state = dict(resumed.meta["train"])
            self.history = resumed.meta.get("history", [])
            if not resumed.same_dir:            # best.npz stays with the run it came from
                self.state["best_acc"] = -1.0
        elif cfg["init_from"]:
            self.model.load_state_dict(init_weights(cfg))
        # The moving average of the weights, evaluated in place of them: it starts at the weights as they are
        # now, or goes on from the checkpoint's (a run that kept none, or --ema added on resume, starts here).
        self.ema = EMA(self.model, cfg["ema"]) if cfg["ema"] else None
        if self.ema is not None and resumed is not None and resumed.averaged:
            self.ema.load(resumed.averaged, self.state.get("ema_updates", 0))

        # The data goes to the device once; batches are gathered, normalised and augmented there.
        self.x_train, self.y_train = to_device(data.x_train, xp), to_device(data.y_train, xp)
        self.x_test, self.y_test = to_device(data.x_test, xp), to_device(data.y_test, xp)
        self.N, self.B = len(data.y_train), cfg["batch_size"]
        self.steps = math.ceil(self.N / self.B)
        self.meta_base = {"classes": list(data.classes), "mean": self.mean, "std": self.std}
        self.norm = aug.normalizer(xp, self.mean, self.std, self.model.dtype)      # uploaded once
        self.saved = (self.state["epoch"], self.state["step"])                     # what latest.npz holds
        threads = cfg["threads"]
        if threads == "auto" and self.world.size > 1:           # the cores of a machine shared by its ranks
            threads = max(1, default_threads() // self.world.local_size)
        self.net = parallelize(self.model, threads)               # the model, or it on several CPU threads
        self.resumed = resumed
        self.test_rows = shard(len(data.y_test), self.world)      # each rank evaluates its part of the test set

    def seed(self, *keys):
        """The seed of a random stream of this step: the same on one process as ever, per rank across several."""
        return seed_for(self.cfg["seed"], *keys, *((self.world.rank,) if self.world.size > 1 else ()))

    def begin(self):
        """The run's first writes: a fresh run's initial checkpoint (so --resume always finds one), or a
        resumed run's metrics.jsonl rewritten from its checkpoint (each epoch once); config.json."""
        run, resumed = self.run, self.resumed
        if resumed is not None:
            if self.writer:
                write_metrics(run.file("metrics.jsonl"), self.history)
            self.log(f"resuming from {resumed.path}: epoch {self.state['epoch'] + 1}, step {self.state['step']}"
                     + ("" if resumed.same_dir else f", into {run.path}"))
        else:
            self.save("latest.npz", 0, 0, None)
        if self.writer:
            atomic_write_text(run.file("config.json"), json_text(self.cfg))
        self.note_settings()

    def note_settings(self):
        cfg = self.cfg
        if cfg["warmup_epochs"] >= cfg["epochs"]:
            self.log(f"note: warmup ({cfg['warmup_epochs']} epochs) lasts the whole run of {cfg['epochs']}: "
                     f"the learning rate never reaches {cfg['lr']}; set --warmup-epochs to change that")
        if threads_warning(cfg["threads"]):
            print(threads_warning(cfg["threads"]), file=self.err)
        self.log(f"npvit: {self.model.num_parameters():,} parameters, {self.N} train / {len(self.y_test)} "
                 f"{'held-out (val)' if cfg['val_split'] else 'test'} images, {self.steps} steps of {self.B} per epoch, recipe {cfg['recipe']}, {cfg['backend']} "
                 f"{cfg['dtype']}, kernels {kernels_name(self.model.kernels)}" + (f", {getattr(self.net, 'threads', 1)} threads" if cfg["backend"] == "numpy" else "")
                 + (f", {self.world.size} processes" if self.world.size > 1 else "") + f"; writing to {self.run.path}")

    def fit(self):
        """Train from the current state to the last epoch, or until a stop is requested; the history."""
        cfg = self.cfg
        if self.state["epoch"] >= cfg["epochs"]:
            self.log(f"nothing to do: this run already finished {self.state['epoch']} epochs; "
                     f"pass --epochs to train longer")
        self.net.train()
        self.stop.note = self.err
        # A diverging run overflows; the loop reports that itself (diverged), so NumPy's warnings would be noise.
        with self.stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"), one_blas_thread(self.net):
            for epoch in range(self.state["epoch"], cfg["epochs"]):
                finished, step, partial, lr = self.train_epoch(epoch)     # unfinished: a stop was requested
                if finished:
                    self.end_of_epoch(epoch, partial, lr)
                if self.stop.requested:
                    if not finished:
                        self.save("latest.npz", epoch, step, partial)
                    where = f"at epoch {epoch + 1} step {step}" if not finished else f"after epoch {epoch + 1}"
                    self.log(f"saved {self.run.file('latest.npz')} {where}; resume with --resume {self.run.path}")
                    break
        return self.history

    def train_epoch(self, epoch):
        """The steps of one epoch from where the state says: (finished, steps done, running totals, lr)."""
        cfg, xp, net, B = self.cfg, self.xp, self.net, self.B
        resuming = epoch == self.state["epoch"]
        start = self.state["step"] if resuming else 0
        partial = (self.state["partial"] if resuming and self.state["partial"] else
                   {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0})
        perm = to_device(np.random.default_rng(seed_for(cfg["seed"], epoch)).permutation(self.N), xp)
        progress = Progress(cfg, self.steps, start, epoch, self.err)
        loss_sum, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
        seen, t0, lr, first = 0, time.perf_counter(), cfg["lr"], start
        try:
            for i in range(start, self.steps):
                lr = lr_at(cfg, epoch * self.steps + i, self.steps)
                self.opt.set_lr(lr)
                batch = perm[i * B:(i + 1) * B]                   # the global batch, the same on every rank
                idx = batch[shard(len(batch), self.world)]         # this rank's rows of it
                yb = self.y_train[idx]
                rng = default_rng(xp, self.seed(epoch, i, 1))
                host_rng = np.random.default_rng(self.seed(epoch, i, 3))
                xb, target = augment_batch(cfg, self.x_train[idx], yb, self.norm, net.dtype, rng, host_rng)
                net.reseed(self.seed(epoch, i, 2))                 # dropout masks from (seed, epoch, step) alone
                loss, n_correct = train_step(net, self.opt, xb, target, yb, cfg["label_smoothing"],
                                             cfg["grad_clip"], cfg["micro_batch"], global_batch=len(batch),
                                             reduce_grads=self.world.allreduce_ if self.world.size > 1 else None)
                if self.ema is not None:
                    self.ema.update()
                loss_sum += loss * len(yb)
                correct += n_correct
                seen += len(batch)
                progress.step()
                if i % LOG_EVERY == LOG_EVERY - 1 or i == self.steps - 1:
                    # One read-back per LOG_EVERY steps (summed over the ranks): the running loss shows
                    # progress and catches divergence, on every rank at the same step.
                    total_loss, total_correct = self.world.sum([to_host_scalar(loss_sum), to_host_scalar(correct)])
                    done = partial["seen"] + seen
                    running = (partial["loss_sum"] + total_loss) / done
                    if not math.isfinite(running):
                        raise self.diverged(epoch, first, i + 1, running, lr)
                    first = i + 1
                    progress.show(i + 1, running, (partial["correct"] + total_correct) / done,
                                  seen / (time.perf_counter() - t0), lr)
                if cfg["check_replicas"] and (epoch * self.steps + i + 1) % cfg["check_replicas"] == 0:
                    self.check_replicas(epoch, i + 1)
                for callback in self.callbacks:
                    callback(self, epoch, i + 1)
                if self.world.any(self.stop.requested) and i < self.steps - 1:   # every rank stops at this step
                    self.stop.requested = True
                    return False, i + 1, self.merge(partial, loss_sum, correct, seen, t0), lr
        finally:
            progress.close()
        return True, self.steps, self.merge(partial, loss_sum, correct, seen, t0), lr

    def merge(self, partial, loss_sum, correct, seen, t0):
        """The epoch's running totals so far, summed over the ranks (a checkpoint holds the global ones)."""
        total_loss, total_correct = self.world.sum([to_host_scalar(loss_sum), to_host_scalar(correct)])
        return {"loss_sum": partial["loss_sum"] + total_loss, "correct": partial["correct"] + int(total_correct),
                "seen": partial["seen"] + seen, "seconds": partial["seconds"] + time.perf_counter() - t0}

    def check_replicas(self, epoch, step):
        """Debug (--check-replicas N): every rank must hold the same weights; a checksum compares them."""
        checksum = float(to_host_scalar(self.model.flat_params.astype(np.float64).sum()))
        if not self.world.same(checksum):
            raise RuntimeError(f"the processes' weights differ after epoch {epoch + 1}, step {step} (checksum "
                               f"{checksum!r} on rank {self.world.rank}): their updates were not the same")

    def end_of_epoch(self, epoch, partial, lr):
        """Evaluate, record the epoch in metrics.jsonl, then save best.npz and latest.npz, in that order:
        a crash between any two of these writes resumes from latest.npz and rewrites the rest identically."""
        cfg = self.cfg
        record = {"epoch": epoch + 1, "train_loss": partial["loss_sum"] / partial["seen"],
                  "train_acc": partial["correct"] / partial["seen"], "lr": lr,
                  "seconds": partial["seconds"], "images_per_s": partial["seen"] / partial["seconds"]}
        if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
            t1 = time.perf_counter()
            split = "val" if cfg["val_split"] else "test"      # held-out training images, or the test set
            if cfg["eval_raw"]:
                record[f"raw_{split}_loss"], record[f"raw_{split}_acc"] = self.evaluate()
            with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
                record[f"{split}_loss"], record[f"{split}_acc"] = self.evaluate()
            record["eval_seconds"] = time.perf_counter() - t1
        self.history.append(strict_json(record))
        if self.writer:
            write_metrics(self.run.file("metrics.jsonl"), self.history)
        self.log(summary(record, cfg["epochs"]))
        acc = record.get("val_acc", record.get("test_acc", -1.0))
        if acc > self.state["best_acc"]:
            self.state["best_acc"] = acc
            self.save("best.npz", epoch + 1, 0, None)
        if (epoch + 1) % cfg["save_every"] == 0 or epoch + 1 == cfg["epochs"] or self.stop.requested:
            self.save("latest.npz", epoch + 1, 0, None)

    def evaluate(self):
        """(loss, accuracy) of the model's current weights on the evaluation set: each rank its part of it."""
        rows = self.test_rows
        n = rows.stop - rows.start
        loss, acc, _ = evaluate(self.net, self.x_test[rows], self.y_test[rows], *self.norm,
                                self.cfg["eval_batch_size"], self.cfg["tta_flip"]) if n else (0.0, 0.0, None)
        total_loss, total_correct = self.world.sum([loss * n, acc * n])
        return total_loss / len(self.y_test), total_correct / len(self.y_test)

    def save(self, name, epoch, step, partial):
        """Write a checkpoint of the current weights, which must be finite (a diverged model is never saved)."""
        bad = [k for k, p in self.model.parameters().items() if not bool(self.xp.isfinite(p).all())]
        if bad:
            raise Diverged(f"the weights became non-finite (in {', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})"
                           f" before epoch {epoch}, step {step} could be saved; {self.kept()}")
        train_state = {"epoch": epoch, "step": step, "best_acc": self.state["best_acc"], "partial": partial,
                       "processes": self.world.size}
        averaged = None
        if self.ema is not None:
            averaged = self.ema.averaged_params()
            train_state["ema_updates"] = self.ema.updates    # (an average of finite weights is finite)
        meta = {**self.meta_base, "train": train_state, "history": self.history, "train_config": self.cfg}
        if self.writer:
            save_checkpoint(self.run.file(name), self.model, self.opt, meta=strict_json(meta), averaged=averaged)
        if name == "latest.npz":
            self.saved = (epoch, step)

    def kept(self):
        e, s = self.saved
        at = f"epoch {e}" + (f", step {s}" if s else "") if e or s else "the initial weights"
        return f"{self.run.file('latest.npz')} keeps the last finite state ({at})"

    def diverged(self, epoch, first, last, loss, lr):
        steps = f"step {last}" if last - first <= 1 else f"steps {first + 1}-{last}"
        return Diverged(f"training diverged in epoch {epoch + 1}, {steps} of {self.steps}: the running loss "
                        f"is {loss} (learning rate {lr:.3g}). The learning rate is the likely cause: lower --lr, "
                        f"or add --warmup-epochs or --grad-clip. {self.kept()}")


def summary(r, epochs):
    split = "val" if "val_acc" in r else "test"
    test = f" | {split} loss {r[split + '_loss']:.4f} acc {r[split + '_acc']:.4f}" if split + "_acc" in r else ""
    return (f"epoch {r['epoch']:>3}/{epochs} | train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}{test} | "
            f"lr {r['lr']:.2e} | {r['seconds']:.1f}s {r['images_per_s']:.0f} img/s")


def json_text(obj):
    return json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n"


# -- starting and resuming a run -------------------------------------------------------
class Resumed:
    """A checkpoint to resume: its path, weights, optimiser state, metadata; same_dir: it continues
    in the directory it came from (else it branches into a new one)."""

    def __init__(self, path, params, optim, meta, averaged, same_dir):
        self.path, self.params, self.optim, self.meta, self.same_dir = path, params, optim, meta, same_dir
        self.averaged = averaged        # the weights' moving average (--ema), or {}


def resume_source(path):
    """``--resume PATH``: a run directory (its latest.npz) or a checkpoint file -> (checkpoint, its directory)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        latest = os.path.join(path, "latest.npz")
        if not os.path.isfile(latest):
            raise CheckpointError(f"{path} holds no checkpoint (latest.npz): the run stopped before its first "
                                  f"save, or this is not a run directory; start the run again without --resume")
        return latest, path
    return path, os.path.dirname(path) or "."


def read_for(cfg, path, what):
    """A checkpoint's (config, params, optim, meta, averaged), refused unless it is of the model ``cfg``
    describes and its weights are finite; ``what`` names it in the message."""
    config, params, optim, meta, averaged = read_checkpoint(path)
    want = ViTConfig.from_dict({k: cfg[k] for k in MODEL_KEYS})
    if config != want:
        diff = {k: (v, getattr(want, k)) for k, v in config.to_dict().items() if getattr(want, k) != v}
        raise CheckpointError(f"{what} is for another model: (file, requested) differ in {diff}")
    check_finite(params, path)
    check_finite(averaged, path)
    return config, params, optim, meta, averaged


def load_resume(cfg, path):
    """Read the checkpoint to resume from; it must be of the config's model and hold a training state."""
    ckpt, _ = resume_source(path)
    _, params, optim, meta, averaged = read_for(cfg, ckpt, f"checkpoint {ckpt}")
    if "train" not in meta or not optim:
        raise CheckpointError(f"checkpoint {ckpt} has no training state (it is a model-only checkpoint); "
                              f"start a new run from its weights with --init-from {ckpt}")
    return ckpt, params, optim, meta, averaged


def init_weights(cfg):
    """The weights of --init-from, which must be of the config's model: the ones its run evaluated (their
    moving average where it kept one, --ema)."""
    _, params, _, _, averaged = read_for(cfg, cfg["init_from"], f"--init-from {cfg['init_from']}")
    return evaluated_weights(params, averaged)


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


def train(cfg, resume=None, overwrite=False, log=print, callbacks=(), stop=None, err=None, world=None):
    """Run (or resume from checkpoint or run directory ``resume``) the training that ``cfg`` describes,
    in ``cfg["out_dir"]``; returns the list of per-epoch metrics. ``world``: the processes of an MPI run
    (npvit/distributed.py; by default this process alone)."""
    world = world or SingleProcess()
    with contextlib.ExitStack() as stack:
        try:
            trainer, clear = start(cfg, resume, overwrite, log, callbacks, stop, err, world, stack)
            failed = None
        except UserError as e:
            failed = e
        # Every rank learns whether any failed to start, so none is left waiting for the others.
        if world.any(failed is not None):
            if world.size == 1:
                raise failed
            from .cli import error_line

            raise StartFailed(world.gather(error_line(failed) if failed is not None else None))
        if clear:
            trainer.run.clear()         # --overwrite: the old run goes only once the new one can start
        trainer.begin()
        return trainer.fit()


def start(cfg, resume, overwrite, log, callbacks, stop, err, world, stack):
    """Everything before the first write: checks, the run directory (rank 0 alone, locked for the run's
    length through ``stack``), data, model. Returns the Trainer, and whether --overwrite must clear the
    directory."""
    validate(cfg)
    try:
        get_xp(cfg["backend"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if world.size > 1 and cfg["backend"] != "numpy":
        raise ConfigError("training on several processes runs on the numpy backend (GPUs would need NCCL)")
    resumed = load_resume(cfg, resume) if resume else None
    if resumed is not None:
        processes = resumed[3]["train"].get("processes", 1)
        if processes != world.size:
            raise CheckpointError(f"checkpoint {resumed[0]} was written by a run on {processes} process(es); resume "
                                  f"it on as many (mpirun -np {processes} ...), this is {world.size}: each process's "
                                  f"augmentation and dropout draw their own streams, so another count would not "
                                  f"continue the same run")
    clear, same_dir = False, True
    if world.rank == 0:                 # rank 0 alone owns the run directory; the others write nothing there
        run = stack.enter_context(RunDir(cfg["out_dir"]))
        if resumed is not None:
            same_dir, clear = claim_for_resume(run, resumed[0], overwrite)
        else:
            clear = run.claim_fresh(overwrite)
    else:
        run = RunDir(cfg["out_dir"])
    resumed = Resumed(*resumed, same_dir=same_dir) if resumed is not None else None
    return Trainer(cfg, run, resumed, log, callbacks, stop, err, world), clear   # nothing written yet


# -- command line ---------------------------------------------------------------------
def _flag(key):
    return "--" + key.replace("_", "-")


def make_parser(prog="scripts/train.py"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the article's Vision Transformer with npvit's hand-written backward passes. "
                    "Settings: defaults < --recipe < --config FILE < flags.",
        epilog="Model keys (the article's config) can be set with the flags above or in the --config JSON, e.g. "
               '{"hidden_size": 64, "epochs": 20}. A run directory holds one run: Ctrl-C saves a checkpoint and '
               "--resume OUT_DIR continues it.")
    p.add_argument("--recipe", choices=list(RECIPES), default=argparse.SUPPRESS,
                   help=f"{OPTIONS['recipe'].help} (default: {TRAIN_DEFAULTS['recipe']})")
    p.add_argument("--config", metavar="FILE", help="JSON file of config keys (model and training)")
    p.add_argument("--resume", metavar="PATH", help="continue the run in this directory (or from this checkpoint "
                   "file), with its own settings unless flags change them; it continues in that directory, "
                   "or branches into --out-dir if given (which must be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out-dir (its "
                   "checkpoints, metrics, config and curves are deleted)")
    t = p.add_argument_group("training")
    for key, o in OPTIONS.items():
        if key == "recipe":
            continue
        kw = dict(dest=key, default=argparse.SUPPRESS, help=f"{o.help} ({default_text(key)})")
        if o.kind == "bool":
            t.add_argument(_flag(key), action=argparse.BooleanOptionalAction, **kw)
        elif o.kind in ("betas", "scale"):
            t.add_argument(_flag(key), nargs=2, type=float, metavar=("A", "B"), **kw)
        elif o.kind == "choice":
            t.add_argument(_flag(key), choices=list(o.choices), **kw)
        elif o.kind == "threads":
            t.add_argument(_flag(key), type=threads_arg, metavar="N|auto", **kw)
        elif o.kind.startswith("int") or o.kind == "seed":
            t.add_argument(_flag(key), type=int, metavar="N", **kw)
        elif o.kind.startswith("float") or o.kind in ("fraction", "probability"):
            t.add_argument(_flag(key), type=float, metavar="X", **kw)
        else:
            t.add_argument(_flag(key), metavar="PATH", **kw)
    m = p.add_argument_group("model (the article's config keys)")
    for key, default in ViTConfig().to_dict().items():
        kw = dict(dest=key, default=argparse.SUPPRESS, help=f"(default: {default})")
        if isinstance(default, bool):
            m.add_argument(_flag(key), action=argparse.BooleanOptionalAction, **kw)
        else:
            m.add_argument(_flag(key), type=type(default), **kw)
    return p


def config_from_args(args):
    """The run's config from the parsed flags: a fresh run's, or a resumed run's own settings with the flags
    on top (its directory as out_dir unless --out-dir branches it elsewhere)."""
    config_file, resume = args.pop("config"), args.pop("resume")
    if not resume:
        return build_config(file=config_file, overrides=args), None
    ckpt, source_dir = resume_source(resume)
    overrides = {**args, "out_dir": args.get("out_dir", source_dir)}
    if config_file is not None:
        return build_config(file=config_file, overrides=overrides), ckpt
    saved = read_checkpoint(ckpt)[3].get("train_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {ckpt} has no training state (it is a model-only checkpoint); "
                              f"start a new run from its weights with --init-from {ckpt}")
    saved = {k: v for k, v in saved.items() if k in ALL_KEYS and k != "out_dir"}
    return build_config(overrides={**saved, **overrides}), ckpt


def main(argv=None, callbacks=(), prog="scripts/train.py"):
    """``scripts/train.py`` and ``npvit train``: 0 when done (or stopped and saved), 1 if training diverged
    or the output was closed, 2 for a usage error."""
    return run_main(lambda a: train_main(a, callbacks, prog), argv)


def train_main(argv=None, callbacks=(), prog="scripts/train.py"):
    args = vars(make_parser(prog).parse_args(argv))
    overwrite = args.pop("overwrite")
    cfg, resume = config_from_args(args)
    stop = StopRequest()
    out = SafeStream(sys.stdout, on_broken=lambda: stop.request("output closed"))
    err = SafeStream(sys.stderr, on_broken=lambda: stop.request("output closed"))
    world = get_world()
    try:
        train(cfg, resume, overwrite, log=lambda msg: print(msg, file=out), callbacks=callbacks, stop=stop, err=err,
              world=world)
    except Diverged as e:                   # every rank diverges at the same step: their totals are the same
        if world.rank == 0:
            print(f"error: {e}", file=err)
        return 1
    except StartFailed as e:                # rank 0 says what went wrong where, each message once
        if world.rank == 0:
            by_message = {}
            for rank, message in enumerate(e.messages):
                if message is not None:
                    by_message.setdefault(message, []).append(rank)
            for message, ranks in by_message.items():
                where = "every process" if len(ranks) == world.size else "process " + ", ".join(map(str, ranks))
                print(f"{message} ({where} of {world.size})", file=err)
        return 2
    except BaseException as e:              # one rank failed: end them all rather than leave them waiting
        if world.size > 1:
            from .cli import error_line

            print(f"rank {world.rank}: " + (error_line(e) if isinstance(e, (UserError, OSError)) else
                                            f"error: {type(e).__name__}: {e}"), file=sys.stderr)
            world.abort(2 if isinstance(e, (UserError, OSError)) else 1)
        raise
    return 1 if out.broken or err.broken else 0
