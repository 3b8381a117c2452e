"""The forward/backward pairs of the kernel-set contract as cases, in one catalogue: the gradient checks of the
reference set (npvit/checks.py, ``npvit gradcheck``), the tests that every set computes the reference's
function (tests/ops/test_kernel_sets.py) and the learners' exercises (npvit/exercises.py, which add to a case
how the learner's function is called and what its mistakes look like) all walk it.

A case is a function of a kernel set ``ops``: ``inputs(r, dims)`` draws its inputs at sizes ``dims`` (B, N,
D, H) with ``r(*shape, scale=1)`` (a random array of the caller's device and dtype), ``forward(ops, **inputs)`` returns (y, cache) and
``backward(ops, dy, cache, **inputs)`` the gradients of the inputs named in ``graded``, in that order.
Sizes: B images, N tokens, D width, H heads (hs = D / H), K classes; odd, so a transposition shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..backend import get_array_module

DIMS = (2, 5, 12, 3)        # B, N, D, H
K = 7


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    inputs: Callable            # inputs(r, dims) -> {name: array}
    forward: Callable           # forward(ops, **inputs) -> (y, cache)
    backward: Callable          # backward(ops, dy, cache, **inputs) -> gradient of each graded input
    graded: tuple               # the inputs whose gradients backward returns, in order


def _keep(r, shape):
    """A dropout mask keep / (1 - p) with p = 0.3, of r's device and dtype."""
    u = r(*shape)                                       # standard normal: P(u >= -0.5244) = 0.7
    return (u >= -0.5244).astype(u.dtype) / u.dtype.type(0.7)


CASES = (
    Case("linear", "linear_forward/backward",
         lambda r, d: {"x": r(d[0], d[1], d[2]), "w": r(K, d[2]), "b": r(K)},
         lambda ops, x, w, b: ops.linear_forward(x, w, b),
         lambda ops, dy, cache, x, w, b: ops.linear_backward(dy, cache, w), ("x", "w", "b")),
    Case("conv2d_patches", "conv2d_forward/backward patches (kernel 4 = stride)",
         lambda r, d: {"x": r(d[0], 3, 8, 8), "w": r(d[2], 3, 4, 4), "b": r(d[2])},
         lambda ops, x, w, b: ops.conv2d_forward(x, w, b, 4, 0),
         lambda ops, dy, cache, x, w, b: ops.conv2d_backward(dy, cache, w), ("x", "w", "b")),
    Case("conv2d_k3_s2_p1", "conv2d_forward/backward k3 s2 p1 (im2col, GEMM, col2im)",
         lambda r, d: {"x": r(d[0], 3, 7, 7), "w": r(4, 3, 3, 3), "b": r(4)},
         lambda ops, x, w, b: ops.conv2d_forward(x, w, b, 2, 1),
         lambda ops, dy, cache, x, w, b: ops.conv2d_backward(dy, cache, w), ("x", "w", "b")),
    Case("layernorm", "layernorm_forward/backward",
         lambda r, d: {"x": r(d[0], d[1], d[2], scale=3.0), "w": 1 + r(d[2], scale=0.1), "b": r(d[2])},
         lambda ops, x, w, b: ops.layernorm_forward(x, w, b, 1e-5),
         lambda ops, dy, cache, x, w, b: ops.layernorm_backward(dy, cache, w), ("x", "w", "b")),
    Case("gelu_tanh", "gelu_forward/backward (tanh)",
         lambda r, d: {"x": r(d[0], d[1], d[2], scale=3.0)},
         lambda ops, x: ops.gelu_forward(x, "tanh"),
         lambda ops, dy, cache, x: ops.gelu_backward(dy, cache), ("x",)),
    Case("gelu_erf", "gelu_forward/backward (erf)",
         lambda r, d: {"x": r(d[0], d[1], d[2], scale=3.0)},
         lambda ops, x: ops.gelu_forward(x, "none"),
         lambda ops, dy, cache, x: ops.gelu_backward(dy, cache), ("x",)),
    Case("softmax", "softmax_forward/backward",
         lambda r, d: {"scores": r(d[0], d[3], d[1], d[1], scale=2.0)},
         lambda ops, scores: (lambda att: (att, att))(ops.softmax_forward(scores)),
         lambda ops, dy, att, scores: ops.softmax_backward(dy, att), ("scores",)),
    Case("softmax_scaled", "softmax_forward/backward (scale 0.3)",
         lambda r, d: {"scores": r(d[0], d[3], d[1], d[1], scale=4.0)},
         lambda ops, scores: (lambda att: (att, att))(ops.softmax_forward(scores, 0.3)),
         lambda ops, dy, att, scores: ops.softmax_backward(dy, att, 0.3), ("scores",)),
    Case("attention", "attention_forward/backward",
         lambda r, d: {"qkv": r(3, d[0], d[3], d[1], d[2] // d[3])},
         lambda ops, qkv: ops.attention_forward(qkv, qkv.shape[-1] ** -0.5, None, None),
         lambda ops, dy, cache, qkv: ops.attention_backward(dy, cache), ("qkv",)),
    Case("attention_dropout", "attention_forward/backward (dropout mask)",
         lambda r, d: {"qkv": r(3, d[0], d[3], d[1], d[2] // d[3]), "mask": _keep(r, (d[0], d[3], d[1], d[1]))},
         lambda ops, qkv, mask: ops.attention_forward(qkv, qkv.shape[-1] ** -0.5, None, mask),
         lambda ops, dy, cache, qkv, mask: ops.attention_backward(dy, cache), ("qkv",)),
    Case("attention_cls", "attention_forward/backward ([CLS] query)",
         lambda r, d: {"qkv": r(3, d[0], d[3], d[1], d[2] // d[3])},
         lambda ops, qkv: ops.attention_forward(qkv, qkv.shape[-1] ** -0.5, 1, None),
         lambda ops, dy, cache, qkv: ops.attention_backward(dy, cache), ("qkv",)),
    Case("attention_cls_dropout", "attention_forward/backward ([CLS] query, dropout mask)",
         lambda r, d: {"qkv": r(3, d[0], d[3], d[1], d[2] // d[3]), "mask": _keep(r, (d[0], d[3], 1, d[1]))},
         lambda ops, qkv, mask: ops.attention_forward(qkv, qkv.shape[-1] ** -0.5, 1, mask),
         lambda ops, dy, cache, qkv, mask: ops.attention_backward(dy, cache), ("qkv",)),
    Case("cross_entropy_labels", "cross_entropy_forward/backward (labels, smoothing 0.1)",
         lambda r, d: {"logits": r(d[0], K), "targets": _labels(r(d[0]))},
         lambda ops, logits, targets: ops.cross_entropy_forward(logits, targets, 0.1),
         lambda ops, dy, cache, logits, targets: dy * ops.cross_entropy_backward(cache), ("logits",)),
    Case("cross_entropy_soft", "cross_entropy_forward/backward (soft targets, smoothing 0.1)",
         lambda r, d: {"logits": r(d[0], K), "targets": _soft(r(d[0], K))},
         lambda ops, logits, targets: ops.cross_entropy_forward(logits, targets, 0.1),
         lambda ops, dy, cache, logits, targets: dy * ops.cross_entropy_backward(cache), ("logits",)),
    Case("im2col_patches", "im2col patches: kernel 4 = stride 4 (backward = col2im)",
         lambda r, d: {"x": r(d[0], 3, 8, 8)},
         lambda ops, x: (ops.im2col(x, 4, 4, 4, 0), None),
         lambda ops, dy, cache, x: ops.col2im(dy, x.shape, 4, 0), ("x",)),
    Case("im2col", "im2col k3 s2 p1 (backward = col2im)",
         lambda r, d: {"x": r(d[0], 3, 7, 7)},
         lambda ops, x: (ops.im2col(x, 3, 3, 2, 1), None),
         lambda ops, dy, cache, x: ops.col2im(dy, x.shape, 2, 1), ("x",)),
)
BY_NAME = {c.name: c for c in CASES}


def _labels(z):
    """Integer labels in [0, K), as many as z has rows, on z's device."""
    return get_array_module(z).arange(len(z)) * 3 % K


def _soft(z):
    """Rows of probabilities (a softmax of z): soft targets, as mixup and cutmix make."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
