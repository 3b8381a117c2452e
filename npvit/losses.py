"""Softmax cross-entropy with optional label smoothing (Szegedy et al. 2016), as torch.nn.CrossEntropyLoss.

The checks of what the caller passed live here; the math is the kernel set's
(``cross_entropy_forward`` / ``cross_entropy_backward`` in npvit/ops).
"""
from __future__ import annotations

from .backend import on_host
from .ops import get_kernels
from .ops.reference import REFERENCE


def log_softmax(logits):
    """Numerically stable log-softmax over the last axis: z - max - log(sum(exp(z - max)))."""
    return REFERENCE.log_softmax(logits)


def softmax_cross_entropy(logits, labels, label_smoothing=0.0, kernels="reference"):
    """Mean cross-entropy over the batch and its gradient.

    logits (B, K) float; labels (B,) int in [0, K), or soft targets (B, K) whose rows
    sum to 1 (from mixup/cutmix). Returns ``(loss, dlogits)``, ``loss`` a 0-d array
    on the logits' device (``float(loss)`` to read it).

    Target q = (1 - eps) onehot(y) + eps / K;  loss = -mean_b sum_k q_k log p_k
    dlogits = (softmax(logits) - q) / B
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {logits.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    B, K = logits.shape
    if labels.ndim == 2:
        if labels.shape != logits.shape:
            raise ValueError(f"soft targets must have the logits' shape {logits.shape}, got {labels.shape}")
        if labels.dtype.kind != "f":
            raise TypeError(f"soft targets must be floating point, got dtype {labels.dtype}")
    else:
        if labels.ndim != 1 or labels.shape[0] != B:
            raise ValueError(f"labels must be (B,) = ({B},), got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        # A range check on a GPU would cost a device sync every step; device labels are checked by the loader.
        if on_host(labels) and B and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"labels must be in [0, {K}), got values from {labels.min()} to {labels.max()}")
    ops = get_kernels(kernels, "cupy" if not on_host(logits) else "numpy")
    loss, cache = ops.cross_entropy_forward(logits, labels, label_smoothing)
    return loss, ops.cross_entropy_backward(cache)
