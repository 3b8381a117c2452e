"""The reference kernel set: every primitive of the contract (npvit/ops/contract.py) as the plain formula.

In the style of llm.c's ``layernorm_forward`` / ``layernorm_backward``: a forward returns its
output and a named cache (what the backward needs, named as in the formulas); a backward takes
the output's gradient and the cache and returns the gradient of every input and parameter.
Plain array expressions, no in-place tricks, the same code for NumPy and CuPy through ``xp``.
This is the set a layer built alone runs, and the one to read: docs/backprop.md derives each
backward next to it. The composites built on these (Linear, the convolution, the attention core)
are in npvit/ops/composites.py; the other sets implement the same signatures faster and are
tested equal to these (float64 to 1e-12, float32 to 1e-5), these against finite differences
and PyTorch.

Shapes: M = product of leading dimensions, D features, K classes.
"""
from __future__ import annotations

import math

from ..backend import erf, get_array_module
from .contract import CrossEntropyCache, GeluCache, LayerNormCache
from .kernelset import KernelSet, own

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# -- GEMM and sums -------------------------------------------------------------------------------
def matmul(a, b, transpose_a=False, transpose_b=False, out=None):
    """a @ b over the last two axes (batched over the leading ones); a^T / b^T are views, no copy."""
    xp = get_array_module(a, b)
    if transpose_a:
        a = a.swapaxes(-1, -2)
    if transpose_b:
        b = b.swapaxes(-1, -2)
    return xp.matmul(a, b, out=out)


def reduce_sum(x, axis, keepdims=False):
    """The sum over one axis."""
    return x.sum(axis=axis, keepdims=keepdims)


# -- LayerNorm over the last axis ---------------------------------------------------------
def layernorm_forward(x, w, b, eps=1e-5):
    """x (..., D) -> y (..., D) = xhat * w + b,  xhat = (x - mean) / sqrt(var + eps) (biased var, as torch)."""
    mean = x.mean(axis=-1, keepdims=True)                        # (..., 1)
    xc = x - mean                                                # (..., D) centred
    var = (xc * xc).mean(axis=-1, keepdims=True)                 # (..., 1)
    rstd = 1.0 / get_array_module(x).sqrt(var + eps)             # (..., 1)
    xhat = xc * rstd                                             # (..., D)
    y = xhat * w + b
    return y, LayerNormCache(xhat, rstd)


def layernorm_backward(dy, cache, w):
    """Returns (dx, dw, db), the forward chain reversed, with D features per row:

        y = xhat w + b            =>  dw = sum over rows of dy xhat,  db = sum over rows of dy,  dxhat = dy w
        xhat = xc rstd            =>  dxc = dxhat rstd (direct),  drstd = sum(dxhat xc) = sum(dxhat xhat) / rstd
        rstd = (var + eps)^(-1/2) =>  dvar = drstd (-1/2) rstd^3
        var = mean(xc^2)          =>  dxc += dvar 2 xc / D
        xc = x - mean(x)          =>  dx = dxc - mean(dxc)
    (xc = xhat / rstd: the cache keeps xhat and rstd only.)
    """
    xhat, rstd = cache
    D = xhat.shape[-1]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                  # (D,)
    db = dy.reshape(-1, D).sum(axis=0)                           # (D,)
    dxhat = dy * w                                               # (..., D)
    drstd = (dxhat * xhat).sum(axis=-1, keepdims=True) / rstd   # (..., 1)
    dvar = drstd * -0.5 * rstd ** 3                              # (..., 1)
    dxc = dxhat * rstd + dvar * 2.0 * (xhat / rstd) / D          # (..., D)
    dx = dxc - dxc.mean(axis=-1, keepdims=True)
    return dx, dw, db


# -- GELU: y = x * gate(x) -------------------------------------------------------------------------
def gelu_forward(x, approximate="tanh"):
    """x (...) -> y (...) = x * gate.  "tanh": gate = 0.5 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
    (the article's NewGELUActivation); "none": gate = Phi(x), the normal CDF (exact, erf)."""
    xp = get_array_module(x)
    if approximate == "tanh":
        u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
        gate = 0.5 * (1.0 + xp.tanh(u))
    else:
        gate = 0.5 * (1.0 + erf(x * INV_SQRT_2))
    return x * gate, GeluCache(x, gate, approximate)


def gelu_backward(dy, cache):
    """y = x gate(x)  =>  dx = dy (gate + x dgate/dx), with
    tanh: dgate/dx = 0.5 (1 - tanh(u)^2) du/dx = 2 gate (1 - gate) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2);
    erf:  dgate/dx = phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    xp = get_array_module(dy)
    x, gate, approximate = cache
    if approximate == "tanh":
        dudx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF * x * x)
        dgate = 2.0 * gate * (1.0 - gate) * dudx
    else:
        dgate = INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (gate + x * dgate)


# -- softmax over the last axis, with a scale ---------------------------------------------------------
def softmax_forward(scores, scale=1.0, out=None):
    """att = exp(z - max) / sum(exp(z - max)), z = scale * scores, row by row (the max keeps exp finite)."""
    xp = get_array_module(scores)
    z = scale * scores
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    att = e / e.sum(axis=-1, keepdims=True)
    if out is None:
        return att
    out[...] = att
    return out


def softmax_backward(datt, att, scale=1.0, out=None):
    """dz = att * (datt - sum(datt * att, -1)): the Jacobian diag(att) - att att^T applied per row;
    z = scale * scores, so dscores = scale * dz."""
    dscores = scale * (att * (datt - (datt * att).sum(axis=-1, keepdims=True)))
    if out is None:
        return dscores
    out[...] = dscores
    return out


# -- softmax cross-entropy with label smoothing --------------------------------------------------
def log_softmax(logits):
    """z - max - log(sum(exp(z - max))) over the last axis."""
    xp = get_array_module(logits)
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, targets, label_smoothing=0.0):
    """logits (B, K); targets (B,) int labels or (B, K) soft targets (rows summing to 1) -> mean loss (0-d).

        q = (1 - eps) onehot(y) + eps / K     (or (1 - eps) targets + eps / K)
        loss = -mean over b of sum over k of q_k log p_k,  p = softmax(logits)
    """
    xp = get_array_module(logits)
    B, K = logits.shape
    if targets.ndim == 1:
        q = xp.zeros_like(logits)
        q[xp.arange(B), targets] = 1.0
    else:
        q = targets.astype(logits.dtype)
    q = (1.0 - label_smoothing) * q + label_smoothing / K       # (B, K)
    logp = log_softmax(logits)                                   # (B, K)
    loss = -(q * logp).sum(axis=-1).mean()
    return loss, CrossEntropyCache(logp, q)


def cross_entropy_backward(cache):
    """dlogits = (softmax(logits) - q) / B."""
    logp, q = cache
    xp = get_array_module(logp)
    return (xp.exp(logp) - q) / logp.shape[0]


# -- im2col / col2im: a convolution as one GEMM -------------------------------------------------
def conv_output_size(size, kernel, stride, padding):
    out = (size + 2 * padding - kernel) // stride + 1
    if out <= 0:
        raise ValueError(f"kernel {kernel} with stride {stride} and padding {padding} does not fit input size {size}")
    return out


def im2col(x, kh, kw, stride=1, padding=0):
    """x (B, C, H, W) -> cols (B, OH, OW, C, kh, kw): every receptive field, gathered.

    Loops over the kh*kw kernel offsets (not over pixels or images): each offset
    takes one strided slice of the padded input for all windows at once.
    """
    xp = get_array_module(x)
    B, C, H, W = x.shape
    OH = conv_output_size(H, kh, stride, padding)
    OW = conv_output_size(W, kw, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((B, C, kh, kw, OH, OW), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride]
    return cols.transpose(0, 4, 5, 1, 2, 3)                      # (B, OH, OW, C, kh, kw)


def col2im(cols, x_shape, stride=1, padding=0):
    """The adjoint of im2col: cols (B, OH, OW, C, kh, kw) -> dx (B, C, H, W).

    Windows that overlap add their contributions (that is what makes it the
    gradient of im2col); padding is cut off at the end.
    """
    xp = get_array_module(cols)
    B, C, H, W = x_shape
    _, OH, OW, _, kh, kw = cols.shape
    cols = cols.transpose(0, 3, 4, 5, 1, 2)                      # (B, C, kh, kw, OH, OW)
    dx = xp.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += cols[:, :, i, j]
    return dx[:, :, padding:padding + H, padding:padding + W]


# -- AdamW over a flat parameter buffer ---------------------------------------------------------
def adamw_update(p, g, m, v, lr, wd, b1, b2, eps, inv_bc1, inv_sqrt_bc2):
    """One AdamW step (torch.optim.AdamW), in place on p, m, v; lr and wd scalars or per-element vectors:

        p *= 1 - lr wd                               decoupled weight decay
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    with inv_bc1 = 1 / (1 - b1^t) and inv_sqrt_bc2 = 1 / sqrt(1 - b2^t) at step t.
    """
    xp = get_array_module(p)
    if not isinstance(wd, float) or wd:
        p *= 1.0 - lr * wd
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    denom = xp.sqrt(v)
    denom *= inv_sqrt_bc2                                        # sqrt(v) / sqrt(1 - b2^t)
    denom += eps
    step = m / denom
    step *= lr * inv_bc1                                         # lr / (1 - b1^t)
    p -= step


# -- SGD over a flat parameter buffer ---------------------------------------------------------
def sgd_update(p, g, buf, lr, wd, momentum, dampening, nesterov, first):
    """One SGD step (torch.optim.SGD), in place on p and the momentum buffer buf:

        g = g + wd p                                  (L2 weight decay, coupled)
        buf = g (first step), else mu buf + (1 - dampening) g
        g = g + mu buf (Nesterov), else buf
        p -= lr g
    """
    if not isinstance(wd, float) or wd:
        g = g + wd * p
    if momentum:
        if first:
            buf[...] = g
        else:
            buf *= momentum
            buf += (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    p -= lr * g


REFERENCE = KernelSet("reference", backends=("numpy", "cupy"), primitives=own(
    matmul, reduce_sum, layernorm_forward, layernorm_backward, gelu_forward, gelu_backward, softmax_forward,
    softmax_backward, log_softmax, cross_entropy_forward, cross_entropy_backward, im2col, col2im, adamw_update,
    sgd_update))
