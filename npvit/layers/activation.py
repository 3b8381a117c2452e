"""GELU (Hendrycks & Gimpel 2016): the tanh approximation of the article's
NewGELUActivation (torch's approximate='tanh') and the exact erf form."""
from __future__ import annotations

import math

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
            # y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
            # Built in place in one buffer; x*x*x, not x**3 (float32 power goes through the slow pow()).
            t = x * x
            t *= x
            t *= GELU_COEF
            t += x
            t *= SQRT_2_OVER_PI
            xp.tanh(t, out=t)
            self.t = t
            y = t + 1.0
            y *= x
            y *= 0.5
            return y
        # y = x Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt 2))
        self.cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))
        return x * self.cdf

    def backward(self, dy):
        xp = get_array_module(dy)
        x = self.x
        if self.approximate == "tanh":
            # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
            t = self.t
            dudx = x * x                                       # in place: dudx, then the whole derivative
            dudx *= 3.0 * GELU_COEF * SQRT_2_OVER_PI
            dudx += SQRT_2_OVER_PI
            g = t * t                                          # g = 0.5 x (1 - t^2) dudx + 0.5 (1 + t)
            xp.subtract(1.0, g, out=g)
            g *= x
            g *= dudx
            g += t
            g += 1.0
            g *= 0.5
            g *= dy
            return g
        # dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        pdf = INV_SQRT_2PI * xp.exp(-0.5 * (x * x))
        return dy * (self.cdf + x * pdf)
