"""Pictures: training curves and attention maps (needs matplotlib).

Attention of the [CLS] token, two ways:
- ``cls_attention``: as the article's figure, the [CLS] row of every layer's and head's
  attention averaged, over the patch tokens;
- ``attention_rollout`` (Abnar & Zuidema 2020): per layer A' = (mean_heads A + I) / 2, rows
  renormalised, multiplied through the layers, then the [CLS] row over the patches.
"""
from __future__ import annotations

import os

import numpy as np

from .backend import to_numpy
from .errors import UserError
from .runfiles import atomic_write

IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def check_image_path(path):
    """The picture format from ``path``'s extension; a UserError for one matplotlib will not write."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext not in IMAGE_FORMATS:
        raise UserError(f"cannot write a picture to {path}: give it one of the extensions "
                        f"{', '.join('.' + e for e in IMAGE_FORMATS)}")
    return ext


def save_figure(fig, path):
    """Save a matplotlib figure atomically in the format its extension names."""
    fmt = check_image_path(path)
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics, out_png, title=None):
    """Loss and accuracy (train and test) per epoch, side by side. Epochs whose values are not
    finite numbers (null in strict JSON) are left out of their curve."""
    plt = _plt()
    check_image_path(out_png)
    metrics = [m for m in metrics if _number(m.get("train_loss")) and _number(m.get("train_acc"))]
    ep = [m["epoch"] for m in metrics]
    split = "val" if any("val_acc" in m for m in metrics) else "test"     # a --val-split run's held-out images
    tested = [{**m, "test_acc": m[split + "_acc"], "test_loss": m[split + "_loss"]} for m in metrics
              if _number(m.get(split + "_acc")) and _number(m.get(split + "_loss"))]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [m["train_loss"] for m in metrics], label="train")
    a.plot([m["epoch"] for m in tested], [m["test_loss"] for m in tested], label=split)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [100 * m["train_acc"] for m in metrics], label="train")
    b.plot([m["epoch"] for m in tested], [100 * m["test_acc"] for m in tested], label=split)
    if tested:
        best = max(tested, key=lambda m: m["test_acc"])
        b.annotate(f"{100 * best['test_acc']:.1f}%", (best["epoch"], 100 * best["test_acc"]),
                   textcoords="offset points", xytext=(-40, -16))
    b.set_xlabel("epoch"), b.set_ylabel("accuracy (%)"), b.legend(), b.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
    return out_png


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _grid(maps):
    B, Np = maps.shape
    g = int(round(Np ** 0.5))
    if g * g != Np:
        raise ValueError(f"attention over {Np} patch tokens is no square grid of patches: was it recorded in "
                         "training mode, with patch dropout leaving tokens out? Call model.eval() first")
    return maps.reshape(B, g, g)                                             # (B, G, G)


def cls_attention(atts):
    """atts: L arrays (B, H, N, N) -> (B, G, G): [CLS] attention to each patch, mean over layers and heads."""
    a = np.stack([to_numpy(x).astype(np.float64) for x in atts], axis=1)   # (B, L, H, N, N)
    return _grid(a[:, :, :, 0, 1:].mean(axis=(1, 2)))


def patch_attention(atts):
    """atts: L arrays (B, H, N, N) -> (B, G, G): the attention each patch receives from the patch tokens (the
    ones a mean-pooling classifier reads), mean over layers, heads and those queries."""
    a = np.stack([to_numpy(x).astype(np.float64) for x in atts], axis=1)   # (B, L, H, N, N)
    return _grid(a[:, :, :, 1:, 1:].mean(axis=(1, 2, 3)))


def attention_rollout(atts, pooling="cls"):
    """atts: L arrays (B, H, N, N) -> (B, G, G): rolled-out attention to each patch, of the [CLS] token
    (pooling "cls") or averaged over the patch tokens (pooling "mean")."""
    rollout = None
    for att in atts:
        a = to_numpy(att).astype(np.float64).mean(axis=1)                 # (B, N, N)
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])                           # the residual path
        a /= a.sum(axis=-1, keepdims=True)
        rollout = a if rollout is None else a @ rollout
    return _grid(rollout[:, 0, 1:] if pooling == "cls" else rollout[:, 1:, 1:].mean(axis=1))


def attention_maps(atts, pooling):
    """The named maps of the attention figure for a model that classifies from ``pooling``."""
    if pooling == "cls":
        return {"CLS attention": cls_attention(atts), "rollout": attention_rollout(atts)}
    return {"patch attention": patch_attention(atts), "rollout": attention_rollout(atts, "mean")}


def upsample(maps, size):
    """(B, G, G) -> (B, size, size) by repeating each cell (size must be a multiple of G)."""
    r = size // maps.shape[-1]
    return maps.repeat(r, axis=1).repeat(r, axis=2)


def plot_attention(images_u8, maps, labels, preds, classes, out_png):
    """One column per image: the image, then each named map (dict name -> (B, G, G)) overlaid on it."""
    plt = _plt()
    B, S = len(images_u8), images_u8.shape[-1]
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, B, figsize=(1.8 * B, 1.9 * rows), squeeze=False)
    imgs = images_u8.transpose(0, 2, 3, 1)
    if imgs.shape[-1] == 1:
        imgs = imgs[..., 0]
    for j in range(B):
        ok = labels[j] == preds[j]
        axes[0, j].imshow(imgs[j], cmap="gray" if imgs.ndim == 3 else None)
        axes[0, j].set_title(f"{classes[labels[j]]}\npred: {classes[preds[j]]}", fontsize=8,
                             color="green" if ok else "red")
        for i, (name, m) in enumerate(maps.items(), start=1):
            up = upsample(m[j:j + 1], S)[0]
            axes[i, j].imshow(imgs[j], cmap="gray" if imgs.ndim == 3 else None)
            axes[i, j].imshow(up, cmap="jet", alpha=0.5)
            if j == 0:
                axes[i, j].set_ylabel(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
    return out_png
