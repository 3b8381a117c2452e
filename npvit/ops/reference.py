"""The math of every layer, written once to be read: forward/backward function pairs.

In the style of llm.c's ``layernorm_forward`` / ``layernorm_backward``: a forward returns its
output and a cache (what the backward needs, named as in the formulas); a backward takes the
output's gradient and the cache and returns the gradient of every input and parameter. Plain
array expressions, no in-place tricks, the same code for NumPy and CuPy through ``xp``.

npvit/ops/numpy_fast.py implements the same signatures faster; the tests hold the two equal
(float64 to 1e-12, float32 to 1e-5) and check these against finite differences and PyTorch.
docs/backprop.md derives each backward.

Shapes: B batch, N tokens, Nq tokens that ask (queries), D width, H heads, hs head size,
M = product of leading dimensions, K classes.
"""
from __future__ import annotations

import math

from ..backend import erf, get_array_module

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# -- Linear: y = x W^T + b ---------------------------------------------------------------
def linear_forward(x, w, b=None):
    """x (..., Din), w (Dout, Din), b (Dout,) or None -> y (..., Dout)."""
    x2d = x.reshape(-1, x.shape[-1])                             # (M, Din)
    y = x2d @ w.T                                                # (M, Dout): one GEMM
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], w.shape[0]), x2d


def linear_backward(dy, cache, w):
    """y = x W^T + b  =>  dx = dy W,  dW = dy^T x,  db = sum over rows of dy. Returns (dx, dw, db)."""
    x2d = cache                                                  # (M, Din)
    dy2d = dy.reshape(-1, dy.shape[-1])                          # (M, Dout)
    dw = dy2d.T @ x2d                                            # (Dout, Din)
    db = dy2d.sum(axis=0)                                        # (Dout,)
    dx = dy2d @ w                                                # (M, Din)
    return dx.reshape(*dy.shape[:-1], w.shape[1]), dw, db


# -- LayerNorm over the last axis ---------------------------------------------------------
def layernorm_forward(x, w, b, eps=1e-5):
    """x (..., D) -> y (..., D) = xhat * w + b,  xhat = (x - mean) / sqrt(var + eps) (biased var, as torch)."""
    mean = x.mean(axis=-1, keepdims=True)                        # (..., 1)
    xc = x - mean                                                # (..., D) centred
    var = (xc * xc).mean(axis=-1, keepdims=True)                 # (..., 1)
    rstd = 1.0 / get_array_module(x).sqrt(var + eps)             # (..., 1)
    xhat = xc * rstd                                             # (..., D)
    y = xhat * w + b
    return y, (xc, xhat, rstd)


def layernorm_backward(dy, cache, w):
    """Returns (dx, dw, db). With D features per row:

        dw = sum over rows of dy * xhat,   db = sum over rows of dy,   dxhat = dy * w
        xhat = xc * rstd, rstd = (var + eps)^(-1/2), var = mean(xc^2), xc = x - mean(x):
        dvar  = sum(dxhat * xc) * (-1/2) rstd^3
        dmean = -sum(dxhat) * rstd + dvar * mean(-2 xc)          (the second term is 0)
        dx    = dxhat * rstd + dvar * 2 xc / D + dmean / D
    """
    xc, xhat, rstd = cache
    D = xc.shape[-1]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                  # (D,)
    db = dy.reshape(-1, D).sum(axis=0)                           # (D,)
    dxhat = dy * w                                               # (..., D)
    dvar = (dxhat * xc).sum(axis=-1, keepdims=True) * -0.5 * rstd ** 3
    dmean = -dxhat.sum(axis=-1, keepdims=True) * rstd + dvar * (-2.0 * xc).mean(axis=-1, keepdims=True)
    dx = dxhat * rstd + dvar * 2.0 * xc / D + dmean / D
    return dx, dw, db


# -- GELU -------------------------------------------------------------------------------------
def gelu_forward(x, approximate="tanh"):
    """x (...) -> y (...). "tanh": y = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
    (the article's NewGELUActivation); "none": y = x Phi(x), Phi the normal CDF."""
    xp = get_array_module(x)
    if approximate == "tanh":
        u = SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)
        t = xp.tanh(u)
        return 0.5 * x * (1.0 + t), (x, t)
    phi_cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))
    return x * phi_cdf, (x, phi_cdf)


def gelu_backward(dy, cache, approximate="tanh"):
    """tanh: dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    erf:  dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi). Returns dx."""
    xp = get_array_module(dy)
    if approximate == "tanh":
        x, t = cache
        dudx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)
    x, phi_cdf = cache
    pdf = INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (phi_cdf + x * pdf)


# -- softmax over the last axis --------------------------------------------------------------
def softmax_forward(scores):
    """att = exp(scores - max) / sum(exp(scores - max)), row by row (the max keeps exp finite)."""
    xp = get_array_module(scores)
    e = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(datt, att):
    """dscores = att * (datt - sum(datt * att, -1)): the Jacobian diag(att) - att att^T applied per row."""
    return att * (datt - (datt * att).sum(axis=-1, keepdims=True))


# -- the attention core: scores, softmax, context ------------------------------------------------
def attention_forward(qkv, scale, num_queries=None, mask=None):
    """qkv (3, B, H, N, hs): every head's queries, keys and values -> ctx (B, H, Nq, hs).

        scores = q k^T * scale      (B, H, Nq, N), scale = 1 / sqrt(hs)
        att    = softmax(scores)    rows sum to 1
        att_d  = att * mask         (attention dropout; mask None: att_d = att)
        ctx    = att_d v            (B, H, Nq, hs)

    Only the first ``num_queries`` tokens ask (the [CLS]-only last block uses 1); every token answers.
    """
    Nq = qkv.shape[3] if num_queries is None else num_queries
    q, k, v = qkv[0, :, :, :Nq], qkv[1], qkv[2]                  # (B, H, Nq, hs), (B, H, N, hs) x 2
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale               # (B, H, Nq, N)
    att = softmax_forward(scores)
    att_d = att if mask is None else att * mask
    ctx = att_d @ v                                              # (B, H, Nq, hs)
    return ctx, (qkv, Nq, scale, att, att_d, mask)


def attention_backward(dctx, cache):
    """dctx (B, H, Nq, hs) -> dqkv (3, B, H, N, hs), the forward reversed:

        ctx = att_d v        =>  datt_d = dctx v^T,  dv = att_d^T dctx
        att_d = att * mask   =>  datt = datt_d * mask
        att = softmax(s)     =>  dscores = softmax_backward(datt, att)
        s = q k^T * scale    =>  dq = dscores k * scale,  dk = dscores^T q * scale
    Tokens that asked nothing (beyond Nq) get no query gradient.
    """
    qkv, Nq, scale, att, att_d, mask = cache
    xp = get_array_module(dctx)
    q, k, v = qkv[0, :, :, :Nq], qkv[1], qkv[2]
    datt_d = dctx @ v.transpose(0, 1, 3, 2)                      # (B, H, Nq, N)
    dv = att_d.transpose(0, 1, 3, 2) @ dctx                      # (B, H, N, hs)
    datt = datt_d if mask is None else datt_d * mask
    dscores = softmax_backward(datt, att)                        # (B, H, Nq, N)
    dq = (dscores @ k) * scale                                   # (B, H, Nq, hs)
    dk = (dscores.transpose(0, 1, 3, 2) @ q) * scale             # (B, H, N, hs)
    dqkv = xp.zeros_like(qkv)                                    # (3, B, H, N, hs)
    dqkv[0, :, :, :Nq] = dq
    dqkv[1] = dk
    dqkv[2] = dv
    return dqkv


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
    return loss, (logp, q)


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


NAMES = ("linear_forward", "linear_backward", "layernorm_forward", "layernorm_backward", "gelu_forward",
         "gelu_backward", "softmax_forward", "softmax_backward", "attention_forward", "attention_backward",
         "cross_entropy_forward", "cross_entropy_backward", "log_softmax", "im2col", "col2im", "adamw_update")
__all__ = list(NAMES) + ["conv_output_size"]
