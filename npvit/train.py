"""Training on CIFAR-10 (or a folder of images): config, recipes, the loop, checkpoints, resume.

One dict holds everything: the article's model keys (``ViTConfig``) plus the
training keys below. It is built from defaults < recipe < JSON config file <
command-line flags. ``scripts/train.py`` is a thin wrapper around :func:`main`.

Randomness of every step (shuffle, augmentation, dropout masks) is derived from
(seed, epoch, step), so a run stopped anywhere and resumed from its checkpoint
continues bit for bit as if it had never stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time

import numpy as np

from . import augment as aug
from .backend import BACKENDS, DTYPES, default_rng, get_xp, seed_for, to_device, to_host_scalar
from .checkpoint import read_checkpoint, save_checkpoint
from .config import ViTConfig
from .data import load_dataset
from .layers.dropout import Dropout
from .losses import softmax_cross_entropy
from .model import ViT
from .optim import AdamW, clip_grad_norm, weight_decay_groups
from .parallel import check_threads, threads_arg

TRAIN_DEFAULTS = {
    "epochs": 100,
    "batch_size": 256,
    "lr": 1e-2,
    "weight_decay": 1e-2,
    "decay": "all",              # "all" parameters (the article's AdamW) or "matrices" (no decay on biases/norms/embeddings)
    "betas": [0.9, 0.999],
    "warmup_epochs": 0.0,
    "schedule": "constant",      # "constant" or "cosine" (to zero at the end of the run)
    "label_smoothing": 0.0,
    "augment": "article",        # "none", "flip", "crop_flip" (pad + random crop + flip), "article" (flip + RandomResizedCrop)
    "crop_padding": 4,
    "rrc_scale": [0.8, 1.0],
    "mixup": 0.0,                # mixup alpha (0 = off)
    "cutmix": 0.0,               # cutmix alpha (0 = off)
    "grad_clip": 0.0,            # global-norm clipping (0 = off)
    "micro_batch": None,         # run each batch through forward/backward in chunks of this size (same step)
    "normalize": "half",         # "half": (x - 0.5) / 0.5 as the article; "dataset": per-channel mean/std of the train set
    "seed": 42,
    "backend": "numpy",
    "dtype": "float32",
    "threads": "auto",           # NumPy: split each batch over this many cores ("auto": all this process may use)
    "dataset": "cifar10",        # "cifar10" or "folder" (<data_dir>/train/<class>/*.png, <data_dir>/test/<class>/...)
    "data_dir": "./data",
    "download": True,
    "out_dir": "runs/vit",
    "eval_every": 1,
    "save_every": 1,
    "eval_batch_size": 500,
    "train_limit": None,
    "test_limit": None,
    "progress": True,
    "recipe": "strong",
}

RECIPES = {
    # The article's training script: AdamW lr 1e-2 (weight decay 1e-2 on everything), batch 256,
    # flip + RandomResizedCrop(scale 0.8-1), inputs normalised to [-1, 1], no schedule, 100 epochs.
    "article": {"epochs": 100, "batch_size": 256, "lr": 1e-2, "weight_decay": 1e-2, "decay": "all",
                "warmup_epochs": 0.0, "schedule": "constant", "label_smoothing": 0.0, "augment": "article",
                "rrc_scale": [0.8, 1.0], "normalize": "half", "mixup": 0.0, "cutmix": 0.0, "grad_clip": 0.0},
    # Ours: AdamW lr 3e-3, weight decay 0.05 on weight matrices only, 3 warmup epochs then cosine to zero,
    # pad-4 random crop + flip, label smoothing 0.1, per-channel normalisation, batch 128.
    "strong": {"epochs": 100, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.05, "decay": "matrices",
               "warmup_epochs": 3.0, "schedule": "cosine", "label_smoothing": 0.1, "augment": "crop_flip",
               "crop_padding": 4, "normalize": "dataset", "mixup": 0.0, "cutmix": 0.0, "grad_clip": 0.0},
}

CHOICES = {"decay": ("all", "matrices"), "schedule": ("constant", "cosine"),
           "augment": ("none", "flip", "crop_flip", "article"), "normalize": ("half", "dataset"),
           "backend": BACKENDS, "dtype": DTYPES, "dataset": ("cifar10", "folder"), "recipe": tuple(RECIPES)}

MODEL_KEYS = ViTConfig.keys()
ALL_KEYS = set(TRAIN_DEFAULTS) | set(MODEL_KEYS)


class ConfigError(ValueError):
    """An impossible or inconsistent training configuration."""


# -- configuration ------------------------------------------------------------
def build_config(recipe=None, file=None, overrides=None) -> dict:
    """defaults < recipe < JSON file < overrides, validated. The recipe may come from the file or overrides."""
    from_file = {}
    if file is not None:
        if not os.path.isfile(file):
            raise ConfigError(f"config file {file} does not exist")
        try:
            with open(file) as f:
                from_file = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {file} is not valid JSON: {e}") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"config file {file} must hold a JSON object of config keys")
    overrides = dict(overrides or {})
    unknown = sorted((set(from_file) | set(overrides)) - ALL_KEYS)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    recipe = overrides.get("recipe", recipe or from_file.get("recipe", TRAIN_DEFAULTS["recipe"]))
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}")
    cfg = {**TRAIN_DEFAULTS, **ViTConfig().to_dict(), **RECIPES[recipe], **from_file, **overrides, "recipe": recipe}
    validate(cfg)
    return cfg


def validate(cfg):
    try:
        ViTConfig.from_dict({k: cfg[k] for k in MODEL_KEYS})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model config: {e}") from None
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {cfg[key]!r}")
    for key in ("epochs", "batch_size", "eval_every", "save_every", "eval_batch_size"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("train_limit", "test_limit", "micro_batch"):
        if cfg[key] is not None and (isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] <= 0):
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "mixup", "cutmix", "grad_clip"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{key} must be a finite number >= 0, got {v!r}")
    if cfg["lr"] == 0:
        raise ConfigError("lr must be positive")
    if cfg["label_smoothing"] >= 1:
        raise ConfigError(f"label_smoothing must be below 1, got {cfg['label_smoothing']}")
    b = cfg["betas"]
    if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(0 <= v < 1 for v in b)):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {b!r}")
    s = cfg["rrc_scale"]
    if not (isinstance(s, (list, tuple)) and len(s) == 2 and 0 < s[0] <= s[1] <= 1):
        raise ConfigError(f"rrc_scale must be [low, high] with 0 < low <= high <= 1, got {s!r}")
    if not isinstance(cfg["crop_padding"], int) or cfg["crop_padding"] < 0:
        raise ConfigError(f"crop_padding must be an integer >= 0, got {cfg['crop_padding']!r}")
    get_xp(cfg["backend"])  # a clear error now if CuPy or the GPU is missing
    try:
        check_threads(cfg["threads"], cfg["backend"])
    except ValueError as e:
        raise ConfigError(str(e)) from None


def lr_at(cfg, step, steps_per_epoch):
    """Linear warmup from 0 over ``warmup_epochs``, then constant or cosine to zero at the last step."""
    total = cfg["epochs"] * steps_per_epoch
    warmup = cfg["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        return cfg["lr"] * (step + 1) / warmup
    if cfg["schedule"] == "constant":
        return cfg["lr"]
    progress = (step - warmup) / max(total - warmup, 1)
    return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- data -------------------------------------------------------------------------
def load_data(cfg):
    data = load_dataset(cfg["dataset"], cfg["data_dir"], cfg["image_size"], cfg["num_channels"], cfg["download"])
    if data.x_train.shape[1:] != (cfg["num_channels"], cfg["image_size"], cfg["image_size"]):
        raise ConfigError(f"the data's images are {data.x_train.shape[1:]} (C, H, W) but the model expects "
                          f"num_channels={cfg['num_channels']}, image_size={cfg['image_size']}")
    if len(data.classes) != cfg["num_classes"]:
        raise ConfigError(f"the data has {len(data.classes)} classes but num_classes={cfg['num_classes']}")
    return data.limit(cfg["train_limit"], cfg["test_limit"])


def norm_stats(cfg, data):
    if cfg["normalize"] == "half":
        return [0.5] * cfg["num_channels"], [0.5] * cfg["num_channels"]
    return data.channel_stats()


def augment_batch(cfg, x, y, rng, host_rng):
    """x float (B, C, H, W) normalised, y (B,) -> augmented x and targets (labels, or soft targets with mix)."""
    if cfg["augment"] == "crop_flip":
        x = aug.random_crop(x, cfg["crop_padding"], rng)
    if cfg["augment"] == "article":
        x = aug.random_resized_crop(x, rng, scale=tuple(cfg["rrc_scale"]))
    if cfg["augment"] != "none":
        x = aug.random_flip(x, rng)
    if cfg["mixup"] or cfg["cutmix"]:
        return aug.mixup_cutmix(x, y, cfg["num_classes"], rng, host_rng, cfg["mixup"], cfg["cutmix"])
    return x, y


def reseed_dropout(model, seed):
    """Dropout masks from (seed, layer, shard) alone, so a resumed run draws what the uninterrupted one did."""
    trees = model.parallel.get_replicas() if model.parallel is not None else [model]   # one per shard
    for shard, tree in enumerate(trees):
        for i, (_, layer) in enumerate(tree.named_layers()):
            if isinstance(layer, Dropout):
                layer.rng = default_rng(model.xp, seed_for(seed, i, shard))


def train_step(model, opt, x, target, labels, label_smoothing=0.0, grad_clip=0.0, micro_batch=None):
    """One optimiser step on the batch x (B, C, H, W): returns (mean loss, number correct), both on the device.

    With ``micro_batch`` m < B the batch runs through forward and backward in chunks of m,
    the gradients adding up: the same step (the loss is a mean, so each chunk's dlogits is
    weighted by m / B), with activations m/B the size, which keeps them in cache.
    """
    B = len(labels)
    m = micro_batch or B
    model.zero_grad()
    loss_sum, correct = 0.0, 0
    for s in range(0, B, m):
        chunk = slice(s, s + m)
        logits = model(x[chunk])
        loss, dlogits = softmax_cross_entropy(logits, target[chunk], label_smoothing)
        n = len(logits)
        if n != B:
            dlogits *= n / B                # d(mean over B)/d(mean over the chunk) = n / B
        model.backward(dlogits)
        loss_sum = loss_sum + loss * n
        correct = correct + (logits.argmax(axis=-1) == labels[chunk]).sum()
    if grad_clip:
        clip_grad_norm(model.gradients(), grad_clip)
    opt.step()
    return loss_sum / B, correct


# -- evaluation -------------------------------------------------------------------
def evaluate(model, x_u8, y, mean, std, batch_size=500):
    """Mean loss and accuracy of ``model`` (eval mode) over uint8 images on its device; returns floats
    and the predictions (on the device)."""
    xp = model.xp
    was_training = model.training
    model.eval()
    loss_sum, preds = 0.0, []
    for i in range(0, len(y), batch_size):
        xb = aug.normalize(x_u8[i:i + batch_size], mean, std, model.dtype)
        logits = model(xb)
        loss, _ = softmax_cross_entropy(logits, y[i:i + batch_size])
        loss_sum = loss_sum + loss * len(xb)
        preds.append(logits.argmax(axis=-1))
    model.train(was_training)
    preds = xp.concatenate(preds)
    return to_host_scalar(loss_sum) / len(y), to_host_scalar((preds == y).mean()), preds


# -- the loop -----------------------------------------------------------------------
class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM: finish the current step, save, exit. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.old:
            signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping: finishing this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def check_out_dir(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {out_dir!r}: {e.strerror or e}") from None


def resume_state(cfg, path):
    """Read a checkpoint to resume from; the model must be the same as the config's."""
    if os.path.isdir(path):
        path = os.path.join(path, "latest.npz")
    config, params, optim, meta = read_checkpoint(path)
    want = ViTConfig.from_dict({k: cfg[k] for k in MODEL_KEYS})
    if config != want:
        diff = {k: (v, getattr(want, k)) for k, v in config.to_dict().items() if getattr(want, k) != v}
        raise ConfigError(f"checkpoint {path} is for another model: (checkpoint, requested) differ in {diff}")
    if "train" not in meta:
        raise ConfigError(f"checkpoint {path} has no training state (it is a model-only checkpoint)")
    return path, params, optim, meta


def train(cfg, resume=None, log=print):
    """Run (or resume) the training described by ``cfg``; returns the list of per-epoch metrics."""
    validate(cfg)
    resumed = resume_state(cfg, resume) if resume else None
    out_dir = cfg["out_dir"]
    check_out_dir(out_dir)
    data = load_data(cfg)
    mean, std = norm_stats(cfg, data)
    xp = get_xp(cfg["backend"])
    model = ViT({k: cfg[k] for k in MODEL_KEYS}, backend=cfg["backend"], dtype=cfg["dtype"], seed=cfg["seed"],
                threads=cfg["threads"])
    groups = weight_decay_groups(model.parameters(), cfg["weight_decay"]) if cfg["decay"] == "matrices" else None
    opt = AdamW(model, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"], param_groups=groups)

    state = {"epoch": 0, "step": 0, "best_acc": -1.0, "partial": None}
    history = []
    if resumed:
        path, params, optim, meta = resumed
        model.load_state_dict(params)
        opt.load_state_dict(optim)
        state = meta["train"]
        history = meta.get("history", [])
        log(f"resuming from {path}: epoch {state['epoch'] + 1}, step {state['step']}")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    # The data goes to the device once; batches are gathered, normalised and augmented there.
    x_train, y_train = to_device(data.x_train, xp), to_device(data.y_train, xp)
    x_test, y_test = to_device(data.x_test, xp), to_device(data.y_test, xp)
    N, B = len(data.y_train), cfg["batch_size"]
    steps = math.ceil(N / B)
    meta_base = {"classes": list(data.classes), "mean": mean, "std": std}
    norm = aug.normalizer(xp, mean, std, model.dtype)           # uploaded once
    if cfg["warmup_epochs"] >= cfg["epochs"]:
        log(f"note: warmup ({cfg['warmup_epochs']} epochs) lasts the whole run of {cfg['epochs']}: "
            f"the learning rate never reaches {cfg['lr']}; set --warmup-epochs to change that")
    log(f"npvit: {model.num_parameters():,} parameters, {N} train / {len(data.y_test)} test images, "
        f"{steps} steps of {B} per epoch, recipe {cfg['recipe']}, {cfg['backend']} {cfg['dtype']}"
        + (f", {model.threads} threads" if cfg["backend"] == "numpy" else ""))

    def save(name, epoch, step, partial):
        train_state = {"epoch": epoch, "step": step, "best_acc": state["best_acc"], "partial": partial}
        save_checkpoint(os.path.join(out_dir, name), model, opt,
                        meta={**meta_base, "train": train_state, "history": history, "train_config": cfg})

    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    if not resumed and os.path.exists(metrics_path):
        os.remove(metrics_path)   # a fresh run starts a fresh log

    if state["epoch"] >= cfg["epochs"]:
        log(f"nothing to do: this run already finished {state['epoch']} epochs; pass --epochs to train longer")
    model.train()
    with StopRequest() as stop:
        for epoch in range(state["epoch"], cfg["epochs"]):
            start = state["step"] if epoch == state["epoch"] else 0
            partial = state["partial"] if (epoch == state["epoch"] and state["partial"]) else \
                {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            perm = to_device(np.random.default_rng(seed_for(cfg["seed"], epoch)).permutation(N), xp)
            bar = _progress(cfg, steps, start, epoch)
            loss_sum, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)
            seen, t0 = 0, time.perf_counter()
            for i in range(start, steps):
                lr = lr_at(cfg, epoch * steps + i, steps)
                opt.set_lr(lr)
                idx = perm[i * B:(i + 1) * B]
                yb = y_train[idx]
                rng = default_rng(xp, seed_for(cfg["seed"], epoch, i, 1))
                host_rng = np.random.default_rng(seed_for(cfg["seed"], epoch, i, 3))
                xb = aug.normalize(x_train[idx], *norm, model.dtype)
                xb, target = augment_batch(cfg, xb, yb, rng, host_rng)
                reseed_dropout(model, seed_for(cfg["seed"], epoch, i, 2))
                loss, n_correct = train_step(model, opt, xb, target, yb, cfg["label_smoothing"], cfg["grad_clip"],
                                             cfg["micro_batch"])
                loss_sum += loss * len(yb)
                correct += n_correct
                seen += len(yb)
                _test_hooks(epoch * steps + i)
                if bar is not None and (i % 10 == 9 or i == steps - 1):
                    done = partial["seen"] + seen
                    bar.set_postfix(loss=f"{(partial['loss_sum'] + to_host_scalar(loss_sum)) / done:.4f}",
                                    acc=f"{(partial['correct'] + to_host_scalar(correct)) / done:.3f}",
                                    ips=f"{seen / (time.perf_counter() - t0):.0f}", lr=f"{lr:.2e}", refresh=False)
                if bar is not None:
                    bar.update(1)
                if stop.requested and i < steps - 1:
                    partial = _merge(partial, loss_sum, correct, seen, t0)
                    save("latest.npz", epoch, i + 1, partial)
                    if bar is not None:
                        bar.close()
                    log(f"saved {os.path.join(out_dir, 'latest.npz')} at epoch {epoch + 1} step {i + 1}; "
                        f"resume with --resume {out_dir}")
                    return history
            if bar is not None:
                bar.close()
            partial = _merge(partial, loss_sum, correct, seen, t0)
            record = {"epoch": epoch + 1, "train_loss": partial["loss_sum"] / partial["seen"],
                      "train_acc": partial["correct"] / partial["seen"], "lr": lr,
                      "seconds": partial["seconds"], "images_per_s": partial["seen"] / partial["seconds"]}
            if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == cfg["epochs"]:
                t1 = time.perf_counter()
                record["test_loss"], record["test_acc"], _ = evaluate(model, x_test, y_test, *norm,
                                                                      cfg["eval_batch_size"])
                record["eval_seconds"] = time.perf_counter() - t1
            history.append(record)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            log(_summary(record, cfg["epochs"]))
            if record.get("test_acc", -1.0) > state["best_acc"]:
                state["best_acc"] = record["test_acc"]
                save("best.npz", epoch + 1, 0, None)
            if (epoch + 1) % cfg["save_every"] == 0 or epoch + 1 == cfg["epochs"] or stop.requested:
                save("latest.npz", epoch + 1, 0, None)
            if stop.requested:
                log(f"saved {os.path.join(out_dir, 'latest.npz')} after epoch {epoch + 1}; "
                    f"resume with --resume {out_dir}")
                return history
    return history


def _merge(partial, loss_sum, correct, seen, t0):
    return {"loss_sum": partial["loss_sum"] + to_host_scalar(loss_sum),
            "correct": partial["correct"] + int(to_host_scalar(correct)),
            "seen": partial["seen"] + seen, "seconds": partial["seconds"] + time.perf_counter() - t0}


def _progress(cfg, steps, start, epoch):
    if not cfg["progress"]:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{cfg['epochs']}", unit="step",
                dynamic_ncols=True, leave=False)


def _summary(r, epochs):
    test = f" | test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}" if "test_acc" in r else ""
    return (f"epoch {r['epoch']:>3}/{epochs} | train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}{test} | "
            f"lr {r['lr']:.2e} | {r['seconds']:.1f}s {r['images_per_s']:.0f} img/s")


def _test_hooks(global_step):
    """For the tests only: deliver a real signal at a fixed step (NPVIT_TEST_SIGNAL_AT="STEP:SIGNAME")."""
    spec = os.environ.get("NPVIT_TEST_SIGNAL_AT")
    if spec:
        at, name = spec.split(":")
        if global_step == int(at):
            os.kill(os.getpid(), getattr(signal, name))


# -- command line ---------------------------------------------------------------------
def _flag(key):
    return "--" + key.replace("_", "-")


HELP = {
    "epochs": "number of epochs", "batch_size": "training batch size", "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW decoupled weight decay", "decay": "which parameters decay: all | matrices",
    "betas": "AdamW betas, two numbers", "warmup_epochs": "linear warmup length in epochs (fractions allowed)",
    "schedule": "after warmup: constant | cosine (to zero at the end)", "label_smoothing": "label smoothing epsilon",
    "augment": "none | flip | crop_flip (pad + random crop + flip) | article (flip + RandomResizedCrop)",
    "crop_padding": "padding for crop_flip", "rrc_scale": "RandomResizedCrop area range, two numbers",
    "mixup": "mixup alpha (0 = off)", "cutmix": "cutmix alpha (0 = off)", "grad_clip": "clip the global gradient "
    "norm to this (0 = off)", "normalize": "half: (x-0.5)/0.5 as the article | dataset: per-channel mean/std",
    "seed": "seed for weights, shuffling, augmentation, dropout", "backend": "numpy (CPU) | cupy (GPU)",
    "dtype": "float32 | float64", "dataset": "cifar10 | folder (<data-dir>/train/<class>/*.png and test/)",
    "data_dir": "folder holding cifar-10-batches-py/ (downloaded there if absent)",
    "download": "download CIFAR-10 if absent (default on; --no-download to forbid)",
    "out_dir": "where checkpoints (latest.npz, best.npz), metrics.jsonl and config.json go",
    "eval_every": "evaluate on the test set every N epochs", "save_every": "save latest.npz every N epochs",
    "eval_batch_size": "batch size for evaluation", "train_limit": "use only the first N training images",
    "test_limit": "use only the first N test images",
    "threads": "numpy: run each batch as this many shards on as many cores; auto = every core this process may use",
    "micro_batch": "split each batch into chunks of N for forward/backward (same update, less memory)", "progress": "show the progress bar (--no-progress to hide)",
}


def make_parser():
    p = argparse.ArgumentParser(
        prog="scripts/train.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the article's Vision Transformer with npvit's hand-written backward passes. "
                    "Settings: defaults < --recipe < --config FILE < flags.",
        epilog="Model keys (the article's config) can be set with the flags below or in the --config JSON, e.g. "
               '{"hidden_size": 64, "epochs": 20}. Ctrl-C saves a checkpoint; --resume OUT_DIR continues it.')
    p.add_argument("--recipe", choices=list(RECIPES), default=argparse.SUPPRESS,
                   help="preset: article (the article's script) or strong (our best; the default)")
    p.add_argument("--config", metavar="FILE", help="JSON file of config keys (model and training)")
    p.add_argument("--resume", metavar="PATH", help="checkpoint file, or an out dir holding latest.npz")
    t = p.add_argument_group("training")
    for key, default in TRAIN_DEFAULTS.items():
        if key == "recipe":
            continue
        kw = dict(dest=key, default=argparse.SUPPRESS, help=HELP[key])
        if isinstance(default, bool):
            t.add_argument(_flag(key), action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            t.add_argument(_flag(key), nargs=2, type=float, metavar=("A", "B"), **kw)
        elif key in CHOICES:
            t.add_argument(_flag(key), choices=list(CHOICES[key]), **kw)
        elif key == "threads":
            t.add_argument(_flag(key), type=threads_arg, metavar="N|auto", **kw)
        else:
            typ = {int: int, float: float, str: str}.get(type(default), int)
            t.add_argument(_flag(key), type=typ, metavar="N" if typ is int else None, **kw)
    m = p.add_argument_group("model (the article's config keys)")
    for f in ViTConfig().to_dict().items():
        key, default = f
        kw = dict(dest=key, default=argparse.SUPPRESS)
        if isinstance(default, bool):
            m.add_argument(_flag(key), action=argparse.BooleanOptionalAction, **kw)
        else:
            m.add_argument(_flag(key), type=type(default), **kw)
    return p


def main(argv=None):
    args = vars(make_parser().parse_args(argv))
    config_file, resume = args.pop("config"), args.pop("resume")
    try:
        if resume and config_file is None:
            # Resume with the run's own settings unless told otherwise.
            path = os.path.join(resume, "latest.npz") if os.path.isdir(resume) else resume
            saved = read_checkpoint(path)[3].get("train_config")
            if saved is None:
                raise ConfigError(f"checkpoint {path} has no training state (it is a model-only checkpoint)")
            saved_overrides = {k: v for k, v in saved.items() if k in ALL_KEYS}
            cfg = build_config(overrides={**saved_overrides, **args})
        else:
            cfg = build_config(file=config_file, overrides=args)
        train(cfg, resume=resume)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .data import DataError

        if isinstance(e, DataError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    return 0
