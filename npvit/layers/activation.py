"""GELU (Hendrycks & Gimpel 2016): the tanh approximation of the article's
NewGELUActivation (torch's approximate='tanh') and the exact erf form."""
from __future__ import annotations

import math

import numpy as np

from ..backend import erf, get_array_module
from .base import Layer

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_COEF = 0.044715


class GELU(Layer):
    """x (...) -> y (...). approximate="tanh" (default, the article's) or "none" (exact, erf)."""

    def __init__(self, approximate="tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        xp = get_array_module(x)
        self.x = x
        if self.approximate == "tanh":
            # y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3) = x (a + b x^2)
            # computed as y = x s,  s = 0.5 (1 + tanh(u)) = sigmoid(2u) = 1 / (1 + exp(-2u)):
            # exp is cheaper than tanh, and 1 + tanh(u) loses digits to cancellation for negative u.
            # In place in one buffer, constants folded; x*x, never x**3 (float32 power is slow).
            s = x * x
            s *= -2.0 * SQRT_2_OVER_PI * GELU_COEF              # -2 b x^2
            s -= 2.0 * SQRT_2_OVER_PI                          # -2 (a + b x^2)
            s *= x                                             # -2u
            with np.errstate(over="ignore"):                   # exp(-2u) = inf for x < -10: s = 0, y = -0, exact
                xp.exp(s, out=s)
            s += 1.0
            xp.reciprocal(s, out=s)                            # s = sigmoid(2u)
            self.s = s
            return x * s
        # y = x Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt 2))
        self.cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))
        return x * self.cdf

    def backward(self, dy):
        xp = get_array_module(dy)
        x = self.x
        if self.approximate == "tanh":
            # y = x s,  s = sigmoid(2u),  ds/du = 2 s (1 - s)
            # dy/dx = s + x * 2 s (1 - s) * du/dx,  du/dx = a + 3 b x^2
            s = self.s
            dudx2 = x * x                                      # 2 du/dx, in place
            dudx2 *= 6.0 * SQRT_2_OVER_PI * GELU_COEF
            dudx2 += 2.0 * SQRT_2_OVER_PI
            g = 1.0 - s                                        # g = x s (1 - s) 2 du/dx + s
            g *= s
            g *= x
            g *= dudx2
            g += s
            g *= dy
            return g
        # dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        pdf = INV_SQRT_2PI * xp.exp(-0.5 * (x * x))
        return dy * (self.cdf + x * pdf)
