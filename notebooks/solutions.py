"""Solutions to notebooks/03_exercises.ipynb. Look only after trying: each is a few lines once the chain rule
is written down (docs/backprop.md derives every one)."""
import numpy as np

SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
GELU_COEF = 0.044715


def layernorm_backward(dy, cache, w):
    """y = xhat * w + b, xhat = (x - mean) * rstd  ->  (dx, dw, db)."""
    xhat, rstd = cache
    D = xhat.shape[-1]
    dw = (dy * xhat).reshape(-1, D).sum(axis=0)                  # w multiplies xhat in every row
    db = dy.reshape(-1, D).sum(axis=0)
    dxhat = dy * w
    # mean and variance depend on x too: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


def softmax_backward(datt, att):
    """att = softmax(scores) row by row  ->  dscores = att * (datt - sum(datt * att))."""
    return att * (datt - (datt * att).sum(axis=-1, keepdims=True))


def gelu_backward(dy, cache):
    """y = x * gate, gate = 0.5 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)  ->  dx."""
    x, gate, _ = cache
    dudx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_COEF * x * x)
    dgate = 2.0 * gate * (1.0 - gate) * dudx                     # 0.5 (1 - tanh^2) = 2 gate (1 - gate)
    return dy * (gate + x * dgate)


def attention_backward(dctx, cache):
    """scores = q k^T, att = softmax(scale * scores), ctx = att v  ->  dqkv (3, B, H, N, hs)."""
    qkv, att, att_dropped, mask, scale, nq = cache
    q, k, v = qkv[0, :, :, :nq], qkv[1], qkv[2]
    datt = dctx @ v.swapaxes(-1, -2)                             # ctx = att v
    dv = att_dropped.swapaxes(-1, -2) @ dctx
    if mask is not None:
        datt = datt * mask
    dscores = scale * att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    dq = dscores @ k                                             # scores = q k^T
    dk = dscores.swapaxes(-1, -2) @ q
    dqkv = np.zeros_like(qkv)
    dqkv[0, :, :, :nq], dqkv[1], dqkv[2] = dq, dk, dv
    return dqkv


def block_backward(block, dy):
    """x1 = x + attention(ln1(x)),  y = x1 + mlp(ln2(x1))  ->  dx: each residual adds its two paths."""
    dx1 = dy + block.layernorm_2.backward(block.mlp.backward(dy))
    return dx1 + block.layernorm_1.backward(block.attention.backward(dx1))
