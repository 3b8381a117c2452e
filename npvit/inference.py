"""Using a trained model: loading a checkpoint for inference, predictions (with mirror averaging), per-class
accuracy and the confusion matrix, top-k classes. (The `evaluate` program, npvit/cli/evaluate.py, prints them.)"""
from __future__ import annotations

import os

import numpy as np

from .augment import normalize
from .backend import get_xp, to_device, to_numpy
from .checkpoint import SHIPPED, load_checkpoint
from .data import CIFAR10_CLASSES
from .errors import CheckpointError, ConfigError, DataError
from .losses import log_softmax
from .parallel import parallelize


# The weights that ship with npvit (a --recipe full run; its model card is in docs/training.md): what predict and
# attention use when no checkpoint is given.
PRETRAINED = SHIPPED


def load_trained(path, backend="numpy", threads=1, config=None):
    """A trained model in eval mode, with the class names and normalisation it used, and the weights its run
    evaluated (their moving average if it kept one, --ema). Refuses checkpoints with non-finite weights (a
    diverged run's), naming the arrays. ``config``: the model of a .safetensors saved outside npvit (by
    PyTorch), which carries none; such a file gets the article's normalisation ((x - 0.5) / 0.5) and, with
    10 classes, CIFAR-10's class names, listed in ``meta["assumed"]``."""
    try:
        get_xp(backend)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    model, _, meta = load_checkpoint(path, backend=backend, averaged=True, config=config)
    missing = [key for key in ("classes", "mean", "std") if key not in meta]
    if missing and not os.fspath(path).endswith(".safetensors"):
        raise CheckpointError(f"checkpoint {path} has no {missing[0]!r}: it was not written by npvit training")
    if missing:
        c = model.config
        meta = {**meta, "mean": [0.5] * c.num_channels, "std": [0.5] * c.num_channels, "assumed": missing,
                "classes": list(CIFAR10_CLASSES) if c.num_classes == 10 else [f"class {i}" for i in range(c.num_classes)]}
    return parallelize(model, threads).eval(), meta       # on ``threads`` CPU threads (DataParallel) if more than 1


def assumed_note(path, meta):
    """The line that says what was assumed about weights saved outside npvit, or None."""
    if not meta.get("assumed"):
        return None
    names = "CIFAR-10's class names" if meta["classes"][0] == CIFAR10_CLASSES[0] else "classes numbered 0.."
    return (f"note: {path} carries no class names or normalisation (saved outside npvit): using the article's "
            f"normalisation (x - 0.5) / 0.5 and {names}")


def check_labels(labels, classes, where):
    """Every label must name one of the model's classes."""
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(f"{where} has labels up to {int(labels.max())}, but the model knows {len(classes)} "
                        f"classes ({', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}): it was trained "
                        f"on other data")


def confusion_matrix(y_true, y_pred, num_classes):
    """C[i, j] = number of images of class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def predict_logits(model, x, tta_flip=False):
    """The model's logits for normalised images x (B, C, H, W); with ``tta_flip`` (test-time augmentation)
    log((p(x) + p(mirror(x))) / 2), the log of the mean of the probabilities of x and its mirror image."""
    logits = model(x)
    if not tta_flip:
        return logits
    xp = model.xp
    mirrored = model(xp.ascontiguousarray(x[..., ::-1]))
    return xp.logaddexp(log_softmax(logits), log_softmax(mirrored)) - np.log(2.0)


def predict_proba(model, images_u8, mean, std, batch_size=500, tta_flip=False):
    """Class probabilities (N, K) on the host for uint8 images (N, C, H, W)."""
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = normalize(to_device(images_u8[i:i + batch_size], model.xp), mean, std, model.dtype)
        out.append(np.exp(to_numpy(log_softmax(predict_logits(model, x, tta_flip)))))
    return np.concatenate(out)


def topk(probs, classes, k=5):
    """[(class name, probability)] of the k most probable classes for one image's probabilities (K,)."""
    order = np.argsort(-probs)[:k]
    return [(classes[i], float(probs[i])) for i in order]
