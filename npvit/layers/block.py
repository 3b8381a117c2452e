"""The pre-norm transformer block and the encoder stack (the article's Block and Encoder).

    x = x + attention(layernorm_1(x))
    x = x + mlp(layernorm_2(x))

With stochastic depth (``drop_path`` > 0, off in the article's model) each branch passes through
DropPath: per image, kept and scaled by 1/(1-p), or dropped, so that image skips the block's
attention or MLP this step.
"""
from __future__ import annotations

from .activation import GELU
from .attention import MultiHeadSelfAttention
from .base import Layer
from .dropout import DropPath, Dropout
from .linear import Linear
from .norm import LayerNorm


class MLP(Layer):
    """x (B, N, D) -> dense_1 (D->I) -> GELU -> dense_2 (I->D) -> dropout -> (B, N, D)."""

    def __init__(self, hidden_size, intermediate_size, dropout=0.0, approximate="tanh", rng=None, std=0.02):
        super().__init__()
        self.dense_1 = Linear(hidden_size, intermediate_size, rng=rng, std=std)
        self.activation = GELU(approximate)
        self.dense_2 = Linear(intermediate_size, hidden_size, rng=rng, std=std)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        h = self.activation.forward(self.dense_1.forward(x))    # (B, N, I)
        return self.dropout.forward(self.dense_2.forward(h))    # (B, N, D)

    def backward(self, dy):
        # the forward chain in reverse
        dh = self.dense_2.backward(self.dropout.backward(dy))
        return self.dense_1.backward(self.activation.backward(dh))


class Block(Layer):
    """Pre-norm transformer block: (B, N, D) -> (B, N, D), or (B, 1, D) with cls_only."""

    def __init__(self, hidden_size, num_heads, intermediate_size, qkv_bias=True, hidden_dropout=0.0,
                 attn_dropout=0.0, approximate="tanh", rng=None, std=0.02, drop_path=0.0, eps=1e-5):
        super().__init__()
        # Defined in the article's order, so parameters() lists names as its state_dict does.
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, qkv_bias, attn_dropout, hidden_dropout,
                                                rng=rng, std=std)
        self.layernorm_1 = LayerNorm(hidden_size, eps)
        self.mlp = MLP(hidden_size, intermediate_size, hidden_dropout, approximate, rng=rng, std=std)
        self.layernorm_2 = LayerNorm(hidden_size, eps)
        # Only when asked for: the layers of a model without them (and their dropout seeds) stay as they were.
        self.drop_path_1 = DropPath(drop_path) if drop_path > 0 else None
        self.drop_path_2 = DropPath(drop_path) if drop_path > 0 else None

    def forward(self, x, cls_only=False):
        """cls_only: the output of token 0 ([CLS]) only, (B, 1, D), all a ViT classifier reads.
        Its attention still reads every token's key and value, so it is exact, for a fraction of the work."""
        n = 1 if cls_only else None                              # x[:, :None] is every token
        self.n = n
        a = self.attention.forward(self.layernorm_1.forward(x), num_queries=n)
        if self.drop_path_1 is not None:
            a = self.drop_path_1.forward(a)
        x = x[:, :n] + a                                         # residual 1
        m = self.mlp.forward(self.layernorm_2.forward(x))
        if self.drop_path_2 is not None:
            m = self.drop_path_2.forward(m)
        return x + m                                             # residual 2

    def backward(self, dy):
        # y = x1 + dp2(mlp(ln2(x1)))  =>  dx1 = dy + ln2^T mlp^T dp2^T dy
        dm = dy if self.drop_path_2 is None else self.drop_path_2.backward(dy)
        dx1 = dy + self.layernorm_2.backward(self.mlp.backward(dm))
        # x1 = x[:, :n] + dp1(attn(ln1(x)))  =>  dx = ln1^T attn^T dp1^T dx1, plus dx1 on the tokens of the residual
        da = dx1 if self.drop_path_1 is None else self.drop_path_1.backward(dx1)
        dx = self.layernorm_1.backward(self.attention.backward(da))
        dx[:, :self.n] += dx1
        return dx


class Encoder(Layer):
    """A stack of L blocks: (B, N, D) -> (B, N, D) (or (B, 1, D), cls_only); ``blocks.{i}`` as the article names them."""

    def __init__(self, num_layers, hidden_size, num_heads, intermediate_size, qkv_bias=True, hidden_dropout=0.0,
                 attn_dropout=0.0, approximate="tanh", rng=None, std=0.02, drop_path_rate=0.0, eps=1e-5):
        super().__init__()
        # stochastic depth rising linearly with depth, 0 in the first block to drop_path_rate in the last (timm's rule)
        rates = [drop_path_rate * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.blocks = [Block(hidden_size, num_heads, intermediate_size, qkv_bias, hidden_dropout, attn_dropout,
                             approximate, rng=rng, std=std, drop_path=rate, eps=eps) for rate in rates]

    def forward(self, x, cls_only=False):
        """cls_only: the last block computes token 0 only (see Block), returning (B, 1, D)."""
        for i, block in enumerate(self.blocks):
            x = block.forward(x, cls_only=cls_only and i == len(self.blocks) - 1)
        return x

    def backward(self, dy):
        for block in reversed(self.blocks):
            dy = block.backward(dy)
        return dy
