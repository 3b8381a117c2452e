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

The average is an array of the model's flat layout (a companion of ``model.flat``,
npvit/flat.py, so it follows the model when it is cast or moved): an update is one
subtraction and one fused multiply-add over the whole model, and evaluating with it
swaps the parameter buffer's contents in place (the layers, their replicas on other
threads and the optimiser all read that buffer).
"""
from __future__ import annotations

import contextlib


class EMA:
    """``ema = EMA(model, decay)``; ``ema.update()`` after each optimiser step; ``with ema.applied():``
    the model holds the averaged weights (and its raw ones again afterwards)."""

    def __init__(self, model, decay=0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model, self.decay = model, float(decay)
        self.flat = model.owner("average")
        self._average = self.flat.companion(self.flat.params)     # a_0 = p_0
        self.updates = 0
        self.one_minus_d = None                                    # 1 - d_t, a 0-d device array written each update

    @property
    def average(self):
        """The averaged weights, an array of the model's flat layout."""
        return self._average.array

    def rate(self):
        """d_t of the next update."""
        t = self.updates + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def update(self):
        """a <- a + (1 - d)(p - a), which is d a + (1 - d) p."""
        self.begin_update()
        self.apply_update()

    def begin_update(self):
        """The host's part of an update: 1 - d_t into a 0-d device array, and the count."""
        w = self.one_minus_d
        if w is None or w.dtype != self.flat.dtype or type(w) is not type(self.average):   # cast or moved since
            w = self.one_minus_d = self.flat.xp.zeros((), dtype=self.flat.dtype)
        w.fill(1.0 - self.rate())
        self.updates += 1

    def apply_update(self):
        """The device's part: kernels that read the scalar ``begin_update`` wrote (what a captured graph replays)."""
        average = self.average
        step = self.flat.params - average
        step *= self.one_minus_d
        average += step

    @contextlib.contextmanager
    def applied(self):
        """The model holds the averaged weights inside the block, its own afterwards (also on error)."""
        p = self.flat.params
        raw = p.copy()
        p[...] = self.average
        try:
            yield self.model
        finally:
            p[...] = raw

    # -- checkpointing --------------------------------------------------------
    def averaged_params(self) -> dict:
        """The averaged weights as host arrays under the parameters' names (like ``model.state_dict()``)."""
        return self.flat.to_dict(self.average)

    def load(self, params: dict, updates: int):
        """Continue from saved averaged weights (``averaged_params()``) after ``updates`` updates."""
        self.average[...] = self.flat.from_dict(params, "averaged weights")
        self.updates = int(updates)
        return self
