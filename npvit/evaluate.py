"""Using a trained checkpoint: test accuracy, per-class accuracy, confusion matrix, top-k prediction."""
from __future__ import annotations

import numpy as np

from .augment import normalize
from .backend import to_device, to_numpy
from .checkpoint import load_checkpoint
from .losses import log_softmax


def load_trained(path, backend="numpy", threads=1):
    """A checkpoint written by training, in eval mode, with the class names and normalisation it used."""
    model, _, meta = load_checkpoint(path, backend=backend, threads=threads)
    for key in ("classes", "mean", "std"):
        if key not in meta:
            raise ValueError(f"checkpoint {path} has no {key!r}: it was not written by npvit training")
    return model.eval(), meta


def confusion_matrix(y_true, y_pred, num_classes):
    """C[i, j] = number of images of class i predicted as j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def predict_proba(model, images_u8, mean, std, batch_size=500):
    """Class probabilities (N, K) on the host for uint8 images (N, C, H, W)."""
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = normalize(to_device(images_u8[i:i + batch_size], model.xp), mean, std, model.dtype)
        out.append(np.exp(to_numpy(log_softmax(model(x)))))
    return np.concatenate(out)


def topk(probs, classes, k=5):
    """[(class name, probability)] of the k most probable classes for one image's probabilities (K,)."""
    order = np.argsort(-probs)[:k]
    return [(classes[i], float(probs[i])) for i in order]
