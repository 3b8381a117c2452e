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


def plot_graph(nodes, ax=None, title=None):
    """A computational graph drawn left to right, with each array's shape on the edges it travels along:
    ``nodes`` is [(name, label, inputs, shape)] in the forward's order (inputs first, with ``inputs`` empty),
    ``label`` the operation that makes it (e.g. "x - mean"). The backward walks every edge the other way;
    where an array feeds several nodes (a fan-out), their gradients add. Returns the axes."""
    import matplotlib.pyplot as plt

    depth, shape_of, consumers = {}, {}, {}
    for name, _, inputs, shape in nodes:
        depth[name] = 1 + max((depth[i] for i in inputs), default=-1)
        shape_of[name] = shape
        for i in inputs:
            consumers.setdefault(i, []).append(name)
    columns = {}
    for name, _, inputs, _ in nodes:
        if inputs:
            columns.setdefault(depth[name], []).append(name)
    where = {name: (1.6 * d, (len(names) - 1) / 2 - k) for d, names in columns.items() for k, name in enumerate(names)}
    below = {}
    for name, _, inputs, _ in nodes:            # an input sits just before (and below) its first user
        if not inputs:
            x, y = where[consumers[name][0]]
            if depth[consumers[name][0]] == 1 and not below.get(x):
                where[name], below[x] = (x - 1.6, y), 1
            else:
                k = below.get(x, 0)
                where[name], below[x] = (x - 0.9 - 0.5 * k, y - 1.0 - 0.45 * k), k + 1
    if ax is None:
        ys = [y for _, y in where.values()]
        _, ax = plt.subplots(figsize=(1.25 * (max(columns) + 1.5), 0.9 * (max(ys) - min(ys)) + 1.6))
    for name, label, inputs, _ in nodes:
        x, y = where[name]
        for i in inputs:
            xi, yi = where[i]
            span = x - xi
            rad = -0.35 if span > 2.0 and abs(y - yi) < 0.5 else 0.0     # it skips a column: arc over it
            ax.annotate("", xy=(x, y), xytext=(xi, yi), arrowprops=dict(
                arrowstyle="->", color="0.35", lw=1.0, shrinkA=16, shrinkB=16, connectionstyle=f"arc3,rad={rad}"))
            lift = 0.1 + (0.1 * span if rad else 0.0)
            tx, ty = ((x + xi) / 2, (y + yi) / 2 + lift) if abs(y - yi) < 0.5 else (xi + 0.35 * (x - xi) - 0.1,
                                                                                     yi + 0.35 * (y - yi))
            ax.text(tx, ty, shape_of[i], ha="center" if abs(y - yi) < 0.5 else "right", va="bottom", fontsize=6.5,
                    color="tab:blue")
        text = name if not label else f"{name}\n{label}"
        ax.text(x, y, text, ha="center", va="center", fontsize=7.5,
                bbox=dict(boxstyle="round,pad=0.3", fc="0.92" if inputs else "white", ec="0.3"))
    xs, ys = [x for x, _ in where.values()], [y for _, y in where.values()]
    ax.set_xlim(min(xs) - 0.9, max(xs) + 0.9)
    ax.set_ylim(min(ys) - 0.5, max(ys) + 0.3 + 0.15 * max(columns))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    return ax
