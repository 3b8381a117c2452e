"""Softmax cross-entropy with optional label smoothing (Szegedy et al. 2016), as torch.nn.CrossEntropyLoss."""
from __future__ import annotations

import numpy as np

from .backend import get_array_module


def log_softmax(logits):
    """Numerically stable log-softmax over the last axis: z - max - log(sum(exp(z - max)))."""
    xp = get_array_module(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy over the batch and its gradient.

    logits (B, K) float; labels (B,) int in [0, K), or soft targets (B, K) whose rows
    sum to 1 (from mixup/cutmix). Returns ``(loss, dlogits)``, ``loss`` a 0-d array
    on the logits' device (``float(loss)`` to read it).

    Target q = (1 - eps) onehot(y) + eps / K;  loss = -mean_b sum_k q_k log p_k
    dlogits = (softmax(logits) - q) / B
    """
    xp = get_array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {logits.shape}")
    if labels.ndim == 2:
        return _soft_cross_entropy(logits, labels, label_smoothing)
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be (B,) = ({logits.shape[0]},), got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    B, K = logits.shape
    # A range check on the GPU would cost a device sync every step; device labels are checked by the loader.
    if xp is np and B and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must be in [0, {K}), got values from {labels.min()} to {labels.max()}")
    logp = log_softmax(logits)                                   # (B, K)
    rows = xp.arange(B)
    nll = -logp[rows, labels]                                    # (B,)
    loss = (1.0 - label_smoothing) * nll.mean()
    if label_smoothing:
        loss = loss - label_smoothing * logp.mean(axis=-1).mean()
    dlogits = xp.exp(logp)                                       # softmax, (B, K)
    dlogits[rows, labels] -= 1.0 - label_smoothing
    if label_smoothing:
        dlogits -= label_smoothing / K
    dlogits /= B
    return loss, dlogits


def _soft_cross_entropy(logits, targets, label_smoothing):
    """The same loss for soft targets q (B, K): q <- (1 - eps) q + eps / K; dlogits = (softmax - q) / B."""
    xp = get_array_module(logits)
    if targets.shape != logits.shape:
        raise ValueError(f"soft targets must have the logits' shape {logits.shape}, got {targets.shape}")
    if targets.dtype.kind != "f":
        raise TypeError(f"soft targets must be floating point, got dtype {targets.dtype}")
    B, K = logits.shape
    q = (1.0 - label_smoothing) * targets + label_smoothing / K
    logp = log_softmax(logits)
    loss = -(q * logp).sum(axis=-1).mean()
    dlogits = xp.exp(logp)
    dlogits -= q
    dlogits /= B
    return loss, dlogits
