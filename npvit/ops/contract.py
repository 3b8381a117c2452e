"""The kernel-set contract: the primitives every implementation of npvit's math supplies and the named
caches they return (the table that holds one implementation, KernelSet, is npvit/ops/kernelset.py).

As minitorch's ``TensorBackend`` takes a few primitives (map, zip, reduce, matrix_multiply) and
builds every operation over them, a kernel set is a table of the primitives below; the composites
(Linear, the convolution, the attention core) are written once, in npvit/ops/composites.py, over
whatever set they are given. The sets:

    reference.py    the plain formulas, written to be read (the one a lone layer runs)
    numpy_fast.py   NumPy tricks: fewer passes over memory, row sums as BLAS matrix-vector products
    numba_cpu.py    fused CPU loops compiled by Numba (numpy backend)
    cupy_fused.py   fused CUDA kernels (cupy backend)
    cupy_capturable.py  fused's, with no cuBLAS: what a CUDA graph captures (cupy backend)

Each set's file ends with its table, one line per primitive, so one look shows what the set
implements itself and what it takes from which other set. A set replaces a composite only with
a genuinely fused kernel (``fused={...}``), tested equal to the composite.

Every function of a set has exactly the signature of the stub here (checked when the table is
built, and by tests/ops/test_contract.py). The sets are registered, fastest first, in
npvit/ops/__init__.py. Shapes: B batch, N tokens, Nq tokens that ask
(queries), D width, H heads, hs head size, M product of leading dimensions, K classes.
"""
from __future__ import annotations

from typing import Any, NamedTuple


# -- the named caches: what a forward keeps for its backward ------------------------------------
class LayerNormCache(NamedTuple):
    xhat: Any          # (..., D) the normalised input, (x - mean) * rstd
    rstd: Any          # (..., 1) 1 / sqrt(var + eps)


class GeluCache(NamedTuple):
    x: Any             # (...) the input
    gate: Any          # (...) y = x * gate: 0.5 (1 + tanh(u)) for "tanh", Phi(x) for "none" (erf)
    approximate: str   # "tanh" or "none"


class CrossEntropyCache(NamedTuple):
    logp: Any          # (B, K) log-probabilities
    q: Any             # (B, K) the smoothed target distribution


class LinearCache(NamedTuple):
    x2d: Any           # (M, Din) the input, every leading axis folded into rows
    has_bias: bool


class Conv2dCache(NamedTuple):
    cols: Any          # (B*OH*OW, C*kh*kw) every receptive field, one per row
    x_shape: tuple     # (B, C, H, W)
    stride: int
    padding: int
    has_bias: bool


class AttentionCache(NamedTuple):
    qkv: Any           # (3, B, H, N, hs) queries, keys, values of every head
    att: Any           # (B, H, Nq, N) softmax(q k^T * scale): rows sum to 1
    att_dropped: Any   # (B, H, Nq, N) att * mask (att itself without dropout)
    mask: Any          # (B, H, Nq, N) the dropout mask keep / (1 - p), or None
    scale: float       # 1 / sqrt(hs)
    num_queries: int   # Nq: only the first Nq tokens ask


# -- the primitives: signature and one-line meaning ---------------------------------------------
def matmul(a, b, transpose_a=False, transpose_b=False, out=None):
    """a @ b over the last two axes, batched (and broadcast) over the leading ones; transpose_a / transpose_b
    use a^T / b^T (the transposed forms the backward passes need); ``out``: where to write, or None."""


def reduce_sum(x, axis, keepdims=False):
    """The sum of x over one axis (an int); keepdims keeps it as length 1."""


def layernorm_forward(x, w, b, eps=1e-5):
    """x (..., D) -> (y, LayerNormCache): y = xhat * w + b, xhat = (x - mean) / sqrt(var + eps), biased var."""


def layernorm_backward(dy, cache, w):
    """dy (..., D) -> (dx, dw, db): the gradients of the input, the scale w and the shift b."""


def gelu_forward(x, approximate="tanh"):
    """x (...) -> (y, GeluCache): y = x * gate(x), gate = 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) for
    "tanh" (the article's), the normal CDF Phi(x) for "none" (exact, erf)."""


def gelu_backward(dy, cache):
    """dy (...) -> dx = dy * (gate + x * dgate/dx)."""


def softmax_forward(scores, scale=1.0, out=None):
    """scores (..., n) -> att = softmax(scale * scores) over the last axis, scale > 0; ``out`` may be scores."""


def softmax_backward(datt, att, scale=1.0, out=None):
    """datt (..., n) -> dscores = scale * att * (datt - sum(datt * att, -1)); ``out`` may be datt."""


def log_softmax(logits):
    """logits (..., K) -> log softmax over the last axis: z - max - log(sum(exp(z - max)))."""


def cross_entropy_forward(logits, targets, label_smoothing=0.0):
    """logits (B, K), targets (B,) int labels or (B, K) soft targets -> (mean loss (0-d), CrossEntropyCache)."""


def cross_entropy_backward(cache):
    """-> dlogits (B, K) = (softmax(logits) - q) / B."""


def im2col(x, kh, kw, stride=1, padding=0):
    """x (B, C, H, W) -> cols (B, OH, OW, C, kh, kw): every receptive field of a kh x kw convolution."""


def col2im(cols, x_shape, stride=1, padding=0):
    """cols (B, OH, OW, C, kh, kw) -> dx (B, C, H, W): the adjoint of im2col (overlapping windows add)."""


def adamw_update(p, g, m, v, lr, wd, b1, b2, eps, inv_bc1, inv_sqrt_bc2):
    """One AdamW step, in place on the flat buffers p, m, v (torch.optim.AdamW); lr and wd scalars or vectors."""


def sgd_update(p, g, buf, lr, wd, momentum, dampening, nesterov, first):
    """One SGD step, in place on the flat buffers p and buf (torch.optim.SGD); ``first``: buf starts as g."""


PRIMITIVES = (matmul, reduce_sum, layernorm_forward, layernorm_backward, gelu_forward, gelu_backward,
              softmax_forward, softmax_backward, log_softmax, cross_entropy_forward, cross_entropy_backward,
              im2col, col2im, adamw_update, sgd_update)
PRIMITIVE_NAMES = tuple(f.__name__ for f in PRIMITIVES)
# Built from the primitives in npvit/ops/composites.py; each is called with the set first.
COMPOSITE_NAMES = ("linear_forward", "linear_backward", "conv2d_forward", "conv2d_backward", "attention_forward",
                   "attention_backward")
