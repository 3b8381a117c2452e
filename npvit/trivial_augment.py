"""TrivialAugment (Müller & Hutter 2021), batched on the model's device: each image gets one operation,
drawn uniformly from the list below, at one strength drawn uniformly from 31 bins.

This is torchvision's ``TrivialAugmentWide`` (its operations and magnitude ranges), written
for a whole batch at once: every image draws its operation and bin, then each operation runs
once on the images that drew it (a loop over the 14 operations, never over images). Images
are floats in [0, 1], (B, C, H, W) RGB; the geometric operations fill with black, as
torchvision's default fill, and sample the nearest pixel, as its default interpolation.

    operation     strength m (bin 0 .. 30)       what it does (a "signed" m is negated half the time)
    Identity      -                              nothing
    ShearX/Y      0 .. 0.99, signed              x' = x + m y (or y' = y + m x), about the top-left corner
    TranslateX/Y  0 .. 32 pixels, signed         shift by int(m) pixels
    Rotate        0 .. 135 degrees, signed       about the image centre
    Brightness    0 .. 0.99, signed              blend with black:          f x,               f = 1 + m
    Color         0 .. 0.99, signed              blend with the grey image: f x + (1 - f) grey
    Contrast      0 .. 0.99, signed              blend with the grey mean:  f x + (1 - f) mean(grey)
    Sharpness     0 .. 0.99, signed              blend with a 3x3 smoothing [[1,1,1],[1,5,1],[1,1,1]]/13
                                                 (border pixels kept), as PIL's ImageEnhance.Sharpness
    Posterize     8 .. 2 bits                    keep the top bits of each 8-bit value
    Solarize      threshold 255 .. 0 (of 255)    invert the values >= threshold
    AutoContrast  -                              stretch each channel to [0, 1]
    Equalize      -                              equalise each channel's 256-bin histogram (PIL's rule)

The blends clamp to [0, 1]. grey = 0.2989 R + 0.587 G + 0.114 B (torchvision's rgb_to_grayscale).
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module

NUM_BINS = 31
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def magnitudes(op, num_bins=NUM_BINS):
    """The strengths of ``op``'s bins (host array), torchvision's TrivialAugmentWide ranges."""
    if op in ("ShearX", "ShearY", "Brightness", "Color", "Contrast", "Sharpness"):
        return np.linspace(0.0, 0.99, num_bins)
    if op in ("TranslateX", "TranslateY"):
        return np.linspace(0.0, 32.0, num_bins)
    if op == "Rotate":
        return np.linspace(0.0, 135.0, num_bins)
    if op == "Posterize":
        return 8 - np.round(np.arange(num_bins) / ((num_bins - 1) / 6)).astype(np.int64)
    if op == "Solarize":
        return np.linspace(255.0, 0.0, num_bins)
    return np.zeros(num_bins)


# (operation, bin) -> strength, float64 (Posterize's bits are whole numbers): one upload per batch, not one per op.
STRENGTHS = np.stack([magnitudes(op).astype(np.float64) for op in OPS])     # (14, 31)


def trivial_augment(x, rng, select=None, prob=1.0):
    """x (B, C, H, W) floats in [0, 1] -> each image with one random operation at a random strength.
    ``rng``: a Generator on x's device (numpy or cupy). ``prob``: the chance that an image is
    augmented at all; the others draw Identity (with prob 1 nothing more is drawn, so the stream
    of draws is the same as without it).

    ``select``: how each operation meets its images, with the same result either way:
    "gather" runs it on the images that drew it (their row list's length must come to the host:
    a device sync on a GPU); "mask" runs it on every image and keeps it where drawn (13x the
    arithmetic, which a GPU does not notice, and nothing read back). None: "gather" on NumPy,
    "mask" elsewhere."""
    xp = get_array_module(x)
    if select is None:
        select = "gather" if xp is np else "mask"
    if select not in ("gather", "mask"):
        raise ValueError(f"select must be 'gather' or 'mask', not {select!r}")
    if not 0 < prob <= 1:
        raise ValueError(f"prob must be in (0, 1], not {prob!r}")
    B = x.shape[0]
    op_of = rng.integers(0, len(OPS), size=B)                   # (B,) which operation each image gets
    bin_of = rng.integers(0, NUM_BINS, size=B)                  # (B,) at which strength
    sign = xp.where(rng.random(B) < 0.5, -1.0, 1.0)             # (B,) for the signed operations
    if prob < 1:
        op_of = xp.where(rng.random(B) < prob, op_of, 0)        # (B,) the untouched draw Identity
    strengths = xp.asarray(STRENGTHS)                           # (14, 31) on x's device
    out = x.copy()
    for k, op in enumerate(OPS):
        if op == "Identity":
            continue
        if select == "mask":
            m = strengths[k, bin_of]                            # (B,) every image's strength for op k
            if op in SIGNED:
                m = m * sign
            drew = (op_of == k)[:, None, None, None]            # (B, 1, 1, 1)
            out = xp.where(drew, apply(op, x, m), out)
            continue
        rows = xp.nonzero(op_of == k)[0]
        if rows.size == 0:
            continue
        m = strengths[k, bin_of[rows]]                          # (b,) the strengths of these images
        if op in SIGNED:
            m = m * sign[rows]
        out[rows] = apply(op, x[rows], m)
    return out


def apply(op, x, m):
    """Operation ``op`` on images x (b, C, H, W) in [0, 1] at strengths m (b,)."""
    xp = get_array_module(x)
    dtype = x.dtype
    col = m.astype(dtype)[:, None, None, None]                  # (b, 1, 1, 1) broadcast over each image
    if op == "ShearX":                                          # source x = x' + m y'
        return affine_nearest(x, xp.stack([_ones(m), m, _zeros(m), _zeros(m), _ones(m), _zeros(m)], 1), centre=False)
    if op == "ShearY":                                          # source y = y' + m x'
        return affine_nearest(x, xp.stack([_ones(m), _zeros(m), _zeros(m), m, _ones(m), _zeros(m)], 1), centre=False)
    if op == "TranslateX":                                      # source x = x' - t
        t = xp.trunc(m)
        return affine_nearest(x, xp.stack([_ones(m), _zeros(m), -t, _zeros(m), _ones(m), _zeros(m)], 1))
    if op == "TranslateY":
        t = xp.trunc(m)
        return affine_nearest(x, xp.stack([_ones(m), _zeros(m), _zeros(m), _zeros(m), _ones(m), -t], 1))
    if op == "Rotate":                                          # source = R(-angle) (p - c) + c
        a = m * (math.pi / 180.0)
        c, s = xp.cos(a), xp.sin(a)
        return affine_nearest(x, xp.stack([c, s, _zeros(m), -s, c, _zeros(m)], 1))
    if op == "Brightness":
        return blend(x, xp.zeros_like(x), 1.0 + col)
    if op == "Color":
        return blend(x, grey(x), 1.0 + col)
    if op == "Contrast":
        return blend(x, grey(x).mean(axis=(2, 3), keepdims=True), 1.0 + col)
    if op == "Sharpness":
        return blend(x, smooth(x), 1.0 + col)
    u8 = xp.floor(x * 255.0 + 0.5)                              # the 8-bit values these floats came from
    if op == "Posterize":                                       # keep the top `bits` bits: v - v mod 2^(8-bits)
        step = (2.0 ** (8 - m)).astype(dtype)[:, None, None, None]
        return ((u8 - u8 % step) / 255.0).astype(dtype)
    if op == "Solarize":
        return xp.where(u8 >= col, 1.0 - x, x).astype(dtype)
    if op == "AutoContrast":
        lo = x.min(axis=(2, 3), keepdims=True)
        hi = x.max(axis=(2, 3), keepdims=True)
        flat = hi == lo                                         # a one-valued channel stays as it is
        scale = xp.where(flat, 1.0, 1.0 / xp.where(flat, 1.0, hi - lo))
        return xp.where(flat, x, xp.clip((x - lo) * scale, 0.0, 1.0)).astype(dtype)
    if op == "Equalize":
        return equalize(u8.astype(xp.int64)).astype(dtype) / dtype.type(255.0)
    raise ValueError(f"unknown TrivialAugment operation {op!r}")


def _ones(m):
    return get_array_module(m).ones_like(m)


def _zeros(m):
    return get_array_module(m).zeros_like(m)


def blend(x, other, factor):
    """clamp(f x + (1 - f) other, 0, 1): torchvision's _blend (f > 1 extrapolates away from ``other``)."""
    xp = get_array_module(x)
    return xp.clip(factor * x + (1.0 - factor) * other, 0.0, 1.0).astype(x.dtype)


def grey(x):
    """(b, 3, H, W) -> (b, 1, H, W): 0.2989 R + 0.587 G + 0.114 B."""
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def smooth(x):
    """PIL's SMOOTH filter, 3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13, on the interior pixels; the border keeps x."""
    H, W = x.shape[2:]
    out = x.copy()
    acc = 4.0 * x[:, :, 1:-1, 1:-1]                             # centre weight 5 = 4 + the 1 of the 3x3 sum
    for dy in range(3):
        for dx in range(3):
            acc = acc + x[:, :, dy:H - 2 + dy, dx:W - 2 + dx]
    out[:, :, 1:-1, 1:-1] = acc / 13.0
    return out


def affine_nearest(x, inverse, centre=True):
    """Resample x (b, C, H, W): output pixel p takes the source pixel containing A p + t, black outside.

    ``inverse``: (b, 6) rows (a, b, t_x, c, d, t_y) of the map from output to source coordinates,
    x_s = a x + b y + t_x, y_s = c x + d y + t_y, where (x, y) is a pixel centre measured from the
    image centre (``centre``) or from the top-left corner.
    """
    xp = get_array_module(x)
    b, C, H, W = x.shape
    ox, oy = (W / 2.0, H / 2.0) if centre else (0.0, 0.0)
    gx = xp.arange(W, dtype=xp.float64) + 0.5 - ox              # (W,) pixel centres
    gy = xp.arange(H, dtype=xp.float64) + 0.5 - oy              # (H,)
    A = inverse[:, :, None, None]                               # (b, 6, 1, 1)
    sx = A[:, 0] * gx[None, None, :] + A[:, 1] * gy[None, :, None] + A[:, 2] + ox    # (b, H, W)
    sy = A[:, 3] * gx[None, None, :] + A[:, 4] * gy[None, :, None] + A[:, 5] + oy    # (b, H, W)
    ix, iy = xp.floor(sx).astype(xp.int64), xp.floor(sy).astype(xp.int64)
    inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)       # (b, H, W)
    ix, iy = xp.clip(ix, 0, W - 1), xp.clip(iy, 0, H - 1)
    bi = xp.arange(b)[:, None, None, None]
    ci = xp.arange(C)[None, :, None, None]
    out = x[bi, ci, iy[:, None], ix[:, None]]                   # (b, C, H, W) one gather for the batch
    return xp.where(inside[:, None], out, 0.0).astype(x.dtype)


def equalize(v):
    """PIL's ImageOps.equalize on integer values v (b, C, H, W) in 0..255, per image and channel.

    With the channel's histogram h and its last non-empty bin's count h_last, step = (sum h - h_last) // 255;
    step 0 leaves the channel as it is, else value v -> min(255, (cumsum h before v + step // 2) // step).
    """
    xp = get_array_module(v)
    b, C, H, W = v.shape
    rows = v.reshape(b * C, H * W)                              # (bC, HW) one row per channel of an image
    offset = (xp.arange(b * C) * 256)[:, None]
    bins = (rows + offset).ravel()                              # (bC HW,) each value's bin among all channels'
    if xp is np:
        hist = np.bincount(bins, minlength=b * C * 256).astype(np.int32)
    else:                                       # a scatter-add: CuPy's bincount reads back whether any bin is negative
        hist = xp.zeros(b * C * 256, dtype=xp.int32)
        xp.add.at(hist, bins, 1)
    hist = hist.reshape(b * C, 256)                             # (bC, 256) each channel's histogram
    nonzero = hist > 0
    last = 255 - xp.argmax(nonzero[:, ::-1], axis=1)            # (bC,) the last non-empty bin
    h_last = xp.take_along_axis(hist, last[:, None], axis=1)[:, 0]
    step = (hist.sum(axis=1) - h_last) // 255                   # (bC,)
    before = xp.cumsum(hist, axis=1) - hist                     # (bC, 256) counts below each value
    lut = xp.minimum((before + (step // 2)[:, None]) // xp.maximum(step, 1)[:, None], 255)
    lut = xp.where((step == 0)[:, None], xp.arange(256)[None, :], lut)
    out = xp.take_along_axis(lut, rows, axis=1)                 # (bC, HW)
    return out.reshape(b, C, H, W)                              # (b, C, H, W)
