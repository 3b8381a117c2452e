"""GELU (Hendrycks & Gimpel 2016): the tanh approximation of the article's
NewGELUActivation (torch's approximate='tanh') and the exact erf form (math in npvit/ops)."""
from __future__ import annotations

from .base import Layer


class GELU(Layer):
    """x (...) -> y (...). approximate="tanh" (default, the article's) or "none" (exact, erf)."""

    def __init__(self, approximate="tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        # y = x * gate:  tanh: gate = 0.5 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3);  none: gate = Phi(x)
        y, self.cache = self.kernels.gelu_forward(x, self.approximate)
        return y

    def backward(self, dy):
        # dx = dy (gate + x dgate/dx):  tanh: dgate/dx = 2 gate (1 - gate) du/dx;  none: dgate/dx = phi(x)
        return self.kernels.gelu_backward(dy, self.cache)
