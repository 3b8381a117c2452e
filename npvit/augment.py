"""Batch augmentation on the model's device, vectorised over the batch (no loop over images).

Every function takes images (B, C, H, W) on numpy or cupy and a Generator of
the same backend, so a seed fixes the result. Each is the batched form of the
torchvision transform named in its docstring.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module


def normalize(images_u8, mean, std, dtype):
    """uint8 (B, C, H, W) -> (x / 255 - mean) / std in ``dtype`` (transforms.ToTensor + Normalize).

    ``mean``/``std``: per-channel sequences, or a pair from :func:`normalizer` (already on the
    device, so a training loop uploads them once rather than every step)."""
    xp = get_array_module(images_u8)
    shift, scale = (mean, std) if hasattr(mean, "shape") else normalizer(xp, mean, std, dtype)
    x = images_u8.astype(dtype)
    x *= scale
    x -= shift
    return x


def normalizer(xp, mean, std, dtype):
    """Per-channel (shift, scale) arrays (1, C, 1, 1) on xp's device: x = u8 * scale - shift."""
    from .backend import to_device

    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=dtype).reshape(1, -1, 1, 1)
    shift = np.asarray(mean, dtype=dtype).reshape(1, -1, 1, 1) * (255.0 * scale)
    return to_device(shift, xp), to_device(scale, xp)


def _gather(x, rows, cols):
    """out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]: one fancy-indexing gather for the whole batch."""
    xp = get_array_module(x)
    B, C = x.shape[:2]
    b = xp.arange(B)[:, None, None, None]
    c = xp.arange(C)[None, :, None, None]
    return x[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop(x, padding, rng):
    """transforms.RandomCrop(size=H, padding): zero-pad by ``padding``, take a random H x W window per image."""
    xp = get_array_module(x)
    B, C, H, W = x.shape
    if padding == 0:
        return x
    xpad = xp.zeros((B, C, H + 2 * padding, W + 2 * padding), x.dtype)   # (B, C, H + 2p, W + 2p): zeros around x
    xpad[:, :, padding:padding + H, padding:padding + W] = x               # (a third of np.pad's time)
    top = rng.integers(0, 2 * padding + 1, size=B)
    left = rng.integers(0, 2 * padding + 1, size=B)
    # Every window of the padded images as a view, windows[b, c, t, l] = xpad[b, c, t:t + H, l:l + W]; then each
    # image's own window in one indexing (a copy of whole rows; a gather of single pixels took 6x as long).
    sB, sC, sH, sW = xpad.strides
    n = 2 * padding + 1
    windows = xp.lib.stride_tricks.as_strided(xpad, (B, C, n, n, H, W), (sB, sC, sH, sW, sH, sW))
    return windows[xp.arange(B), :, top, left]                   # (B, C, H, W)


def random_flip(x, rng, p=0.5):
    """transforms.RandomHorizontalFlip(p): mirror each image left-right with probability p."""
    xp = get_array_module(x)
    flip = rng.random(x.shape[0]) < p                            # (B,)
    return xp.where(flip[:, None, None, None], x[..., ::-1], x)


def random_resized_crop(x, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """transforms.RandomResizedCrop(size=(H, W), scale, ratio), bilinear, batched.

    Per image: area fraction ~ U(scale), log aspect ratio ~ U(log ratio); the first
    of ``attempts`` draws that fits is used, else the whole image (as torchvision's
    fallback for in-range ratios). The box is resized back to H x W by bilinear
    interpolation with half-pixel centres (align_corners=False).
    """
    xp = get_array_module(x)
    B, C, H, W = x.shape
    area = H * W * rng.uniform(scale[0], scale[1], size=(attempts, B))
    logr = rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(attempts, B))
    aspect = xp.exp(logr)
    w = xp.round(xp.sqrt(area * aspect))
    h = xp.round(xp.sqrt(area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)                 # (attempts, B)
    first = xp.argmax(ok, axis=0)                                # first fitting attempt per image
    found = ok.any(axis=0)
    idx = xp.arange(B)
    w = xp.where(found, w[first, idx], W)
    h = xp.where(found, h[first, idx], H)
    top = xp.floor(rng.random(B) * (H - h + 1))
    left = xp.floor(rng.random(B) * (W - w + 1))
    # source coordinate of each output pixel centre
    sy = top[:, None] + (xp.arange(H)[None, :] + 0.5) * (h[:, None] / H) - 0.5    # (B, H)
    sx = left[:, None] + (xp.arange(W)[None, :] + 0.5) * (w[:, None] / W) - 0.5   # (B, W)
    return _bilinear(x, sy, sx)


def _bilinear(x, sy, sx):
    """Sample x at rows sy (B, H') and columns sx (B, W') by bilinear interpolation, edges clamped."""
    xp = get_array_module(x)
    H, W = x.shape[2:]
    sy = xp.clip(sy, 0, H - 1)
    sx = xp.clip(sx, 0, W - 1)
    y0 = xp.floor(sy).astype(xp.int64)
    x0 = xp.floor(sx).astype(xp.int64)
    y1 = xp.minimum(y0 + 1, H - 1)
    x1 = xp.minimum(x0 + 1, W - 1)
    wy = (sy - y0).astype(x.dtype)[:, None, :, None]             # (B, 1, H', 1)
    wx = (sx - x0).astype(x.dtype)[:, None, None, :]             # (B, 1, 1, W')
    top = _gather(x, y0, x0) * (1 - wx) + _gather(x, y0, x1) * wx
    bottom = _gather(x, y1, x0) * (1 - wx) + _gather(x, y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def mixup_cutmix(x, y, num_classes, rng, host_rng, mixup_alpha=0.0, cutmix_alpha=0.0):
    """Mix each image with another from the batch (a random permutation).

    mixup (Zhang et al. 2018): x = lam x + (1 - lam) x[perm];
    cutmix (Yun et al. 2019): paste a random box of x[perm], lam = 1 - box area.
    With both enabled, each batch picks one at random. Returns the mixed images and
    soft targets (B, K): lam onehot(y) + (1 - lam) onehot(y[perm]). The per-batch scalars
    (lam, the box) come from ``host_rng`` (a NumPy Generator), the permutation from ``rng``
    on the device, so nothing is read back from the device.
    """
    xp = get_array_module(x)
    B, C, H, W = x.shape
    onehot = xp.eye(num_classes, dtype=x.dtype)[y]               # (B, K)
    if not (mixup_alpha or cutmix_alpha):
        return x, onehot
    perm = xp.argsort(rng.random(B))                             # a random permutation, drawn on the device
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or host_rng.random() < 0.5)
    if use_cutmix:
        lam = host_rng.beta(cutmix_alpha, cutmix_alpha)
        ch, cw = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(host_rng.integers(0, H)), int(host_rng.integers(0, W))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
        x = x.copy()
        x[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (H * W)
    else:
        lam = host_rng.beta(mixup_alpha, mixup_alpha)
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * onehot + (1.0 - lam) * onehot[perm]
