"""Solutions to notebooks/03_exercises.ipynb. Look only after trying: each is a few lines once the chain rule
is written down (docs/backprop.md derives every one)."""
import numpy as np

SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
GELU_COEF = 0.044715


def linear_backward(dy, cache, w):
    """y = x W^T + b over the rows of x  ->  (dx, dw, db); cache.x2d is x with its leading axes folded into rows."""
    x2d = cache.x2d                                              # (M, Din)
    dy2d = dy.reshape(-1, dy.shape[-1])                          # (M, Dout)
    dx = (dy2d @ w).reshape(*dy.shape[:-1], w.shape[1])          # (..., Din)
    dw = dy2d.T @ x2d                                            # (Dout, Din): every row adds its outer product
    db = dy2d.sum(axis=0) if cache.has_bias else None            # (Dout,): b is added to every row
    return dx, dw, db


def cross_entropy_backward(cache):
    """loss = -mean_b sum_k q_k log p_k, p = softmax(logits)  ->  dlogits = (p - q) / B."""
    logp, q = cache
    return (np.exp(logp) - q) / len(q)


def embeddings_backward(dtokens):
    """tokens = concat([CLS], patches) + pos  ->  (dpatches, dcls, dpos): pos and cls are shared by every image."""
    dpos = dtokens.sum(axis=0, keepdims=True)                    # (1, N, D)
    dcls = dtokens[:, :1].sum(axis=0, keepdims=True)             # (1, 1, D): token 0 of every image
    dpatches = dtokens[:, 1:]                                    # (B, N - 1, D)
    return dpatches, dcls, dpos


def col2im(dcols, x_shape, stride, padding):
    """The backward of im2col: each window's gradient goes back to the pixels it read; overlapping windows add."""
    B, C, H, W = x_shape
    _, OH, OW, _, kh, kw = dcols.shape                           # (B, OH, OW, C, kh, kw)
    dx = np.zeros((B, C, H + 2 * padding, W + 2 * padding), dtype=dcols.dtype)
    for i in range(kh):                                          # a loop over the kernel's kh * kw offsets only
        for j in range(kw):
            dx[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dx[:, :, padding:padding + H, padding:padding + W]   # the padding's gradient is dropped


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
