"""An exponential moving average (EMA) of a model's weights, evaluated in place of the raw weights.

Late in training, AdamW's weights jitter around a minimum at the scale of the learning
rate; their running average sits nearer its centre and usually generalises better
(Polyak & Juditsky 1992; the "model EMA" of timm and of many ViT recipes). After
every optimiser step t:

    d_t = min(decay, (1 + t) / (10 + t))
    a_t = d_t a_{t-1} + (1 - d_t) p_t            (a_0 = p_0, the initial weights)

The warm-up of d_t (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``)
lets the average follow the fast-moving early weights instead of remembering the
initialisation for about 1 / (1 - decay) steps.

The average lives in one flat buffer beside ``model.flat_params`` (the same layout),
so an update is one subtraction and one fused multiply-add over the whole model, and
evaluating with it swaps the buffers' contents in place (the layers, their replicas
on other threads and the optimiser all hold views of ``flat_params``).
"""
from __future__ import annotations

import contextlib

import numpy as np

from .backend import get_array_module, to_device, to_numpy


class EMA:
    """``ema = EMA(model, decay)``; ``ema.update()`` after each optimiser step; ``with ema.applied():``
    the model holds the averaged weights (and its raw ones again afterwards)."""

    def __init__(self, model, decay=0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if getattr(model, "flat_params", None) is None:
            model.flatten()
        self.model, self.decay = model, float(decay)
        self.flat_params = model.flat_params
        self.average = model.flat_params.copy()
        self.updates = 0
        self.xp = get_array_module(self.average)

    def rate(self):
        """d_t of the next update."""
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def update(self):
        """a <- a + (1 - d)(p - a), which is d a + (1 - d) p."""
        self._check()
        step = self.flat_params - self.average
        step *= 1.0 - self.rate()
        self.average += step
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own afterwards (also on error)."""
        self._check()
        raw = self.flat_params.copy()
        self.flat_params[...] = self.average
        try:
            yield self.model
        finally:
            self.flat_params[...] = raw

    def _check(self):
        if self.model.flat_params is not self.flat_params:
            raise RuntimeError("the model's parameters were replaced (astype/to) after this EMA was made; "
                               "make the EMA after moving or casting the model")

    # -- checkpointing --------------------------------------------------------
    def averaged_params(self) -> dict:
        """The averaged weights as host arrays under the parameters' names (like ``model.state_dict()``)."""
        host = to_numpy(self.average)
        return {name: host[offset:offset + size].reshape(shape).copy()
                for name, (offset, size, shape) in self.model.flat_index.items()}

    def load(self, params: dict, updates: int):
        """Continue from saved averaged weights (``averaged_params()``) after ``updates`` updates."""
        index = self.model.flat_index
        missing = [n for n in index if n not in params]
        unknown = [n for n in params if n not in index]
        if missing or unknown:
            raise ValueError(f"averaged weights do not fit the model: missing {missing}, unknown {unknown}")
        host = np.empty(self.average.size, dtype=self.average.dtype)
        for name, (offset, size, shape) in index.items():
            value = np.asarray(params[name])
            if value.shape != tuple(shape):
                raise ValueError(f"averaged weight {name} has shape {value.shape}, the model's is {tuple(shape)}")
            host[offset:offset + size] = value.reshape(-1)
        self.average[...] = to_device(host, self.xp)
        self.updates = int(updates)
        return self
