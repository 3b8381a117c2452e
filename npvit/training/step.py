"""The math of one training step, and of scoring a model on a set of images.

    StepRule:          what a step does besides the model and the optimiser (label smoothing, clip, chunks)
    train_step:        forward and backward over micro-batches, all-reduce, clip, optimiser step
    gradients:         train_step without the optimiser step (a captured step's device part ends with it)
    loss_and_accuracy: the mean loss and accuracy of a model over uint8 images, in eval mode
    EvalPlan:          when and how a run is evaluated
    Evaluation:        a run's evaluation set on the model's device, scored by every rank for its part

Both take the model or its execution strategy (DataParallel, or an MPI rank's part) and leave
every number on the model's device until the caller reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import augment as aug
from ..backend import to_device, to_host_scalar
from ..distributed import shard
from ..inference import predict_logits
from ..losses import softmax_cross_entropy
from ..optim import clip_grad_norm


@dataclass(frozen=True)
class StepRule:
    """What a training step does besides the model and the optimiser: the loss's ``label_smoothing``, the
    clip of the global gradient norm (``grad_clip``; 0 is off), and the chunks of ``micro_batch`` rows the
    batch runs through forward and backward in (None: the whole batch at once)."""
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    micro_batch: Optional[int] = None


def train_step(model, opt, x, target, labels, label_smoothing=0.0, grad_clip=0.0, micro_batch=None,
               global_batch=None, reduce_grads=None):
    """One optimiser step on the batch x (B, C, H, W): returns (mean loss, number correct), both on the device.

    With ``micro_batch`` m < B the batch runs through forward and backward in chunks of m,
    the gradients adding up: the same step (the loss is a mean, so each chunk's dlogits is
    weighted by m / B), with activations m/B the size, which keeps them in cache.

    Across processes (npvit/distributed.py) x is this rank's shard of a batch of ``global_batch``
    rows, each chunk weighted by m / global_batch, and ``reduce_grads(model.flat.grads)`` sums the
    ranks' gradients (one all-reduce) before clipping and the step.
    """
    loss, correct = gradients(model, x, target, labels, label_smoothing, grad_clip, micro_batch, global_batch,
                              reduce_grads)
    opt.step()
    return loss, correct


def gradients(model, x, target, labels, label_smoothing=0.0, grad_clip=0.0, micro_batch=None, global_batch=None,
              reduce_grads=None):
    """The gradient part of ``train_step``: the model's flat gradients of the batch (summed over the ranks,
    clipped), and (mean loss, number correct) on the device; no optimiser step."""
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
        model.backward(dlogits, input_grad=False)     # the images need no gradient
        loss_sum = loss_sum + loss * n
        correct = correct + (logits.argmax(axis=-1) == labels[chunk]).sum()
    if reduce_grads is not None:
        reduce_grads(model.flat.grads)      # the whole batch's gradient, on every rank
    if grad_clip:
        clip_grad_norm(model.flat.grads, grad_clip)
    return loss_sum / max(B, 1), correct


def loss_and_accuracy(model, x_u8, y, mean, std, batch_size=500, tta_flip=False):
    """Mean loss and accuracy of ``model`` (in eval mode) over uint8 images on its device: (loss, accuracy)
    as floats, and the predictions (on the device). ``tta_flip``: average with the mirror images'
    probabilities."""
    xp = model.xp
    was_training = model.training
    model.eval()
    loss_sum, preds = 0.0, []
    for i in range(0, len(y), batch_size):
        xb = aug.normalize(x_u8[i:i + batch_size], mean, std, model.dtype)
        logits = predict_logits(model, xb, tta_flip)
        loss, _ = softmax_cross_entropy(logits, y[i:i + batch_size], kernels=model.kernels)
        loss_sum = loss_sum + loss * len(xb)
        preds.append(logits.argmax(axis=-1))
    model.train(was_training)
    preds = xp.concatenate(preds)
    return to_host_scalar(loss_sum) / len(y), to_host_scalar((preds == y).mean()), preds


@dataclass(frozen=True)
class EvalPlan:
    """When and how a run is evaluated: after every ``every`` epochs and the last, in batches of
    ``batch_size``, averaged with the mirror images if ``tta_flip``, the raw weights too (beside their moving
    average) if ``raw``; on ``split``, "val" (held-out training images) or "test"."""
    every: int = 1
    batch_size: int = 500
    tta_flip: bool = False
    raw: bool = False
    split: str = "test"

    def due(self, epoch, epochs):
        """Whether the run evaluates after epoch ``epoch`` (0-based) of ``epochs``."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == epochs


class Evaluation:
    """The images a run is evaluated on (held-out training images or the test set), on the model's device:
    this rank's part of them (``Evaluation(x_u8, y, norm, batch_size, tta_flip, world, xp)``)."""

    def __init__(self, x_u8, y, norm, batch_size, tta_flip, world, xp):
        rows = shard(len(y), world)
        self.x, self.y = to_device(x_u8, xp)[rows], to_device(y, xp)[rows]
        self.total, self.norm, self.batch_size, self.tta_flip, self.world = len(y), norm, batch_size, tta_flip, world

    def score(self, net):
        """(loss, accuracy) of the model's current weights on the whole set, summed over the ranks."""
        n = len(self.y)
        loss, acc, _ = loss_and_accuracy(net, self.x, self.y, *self.norm, self.batch_size,
                                         self.tta_flip) if n else (0.0, 0.0, None)
        loss_sum, correct = self.world.sum([loss * n, acc * n])
        return loss_sum / self.total, correct / self.total
