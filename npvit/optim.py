"""Optimisers over a model's flat buffers: SGD (momentum, Nesterov) and AdamW (Loshchilov & Hutter 2019),
with parameter groups, global-norm gradient clipping, and the learning-rate schedule. Updates match
torch.optim step for step.

An optimiser asks the model's flat-buffer owner (npvit/flat.py, ``model.flat``) for the
parameters and gradients at every step and keeps its state (moments, per-element learning
rates) as arrays of the same layout that the owner casts and moves with the model. The
arithmetic of an update is the kernel set's (``adamw_update``, ``sgd_update``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backend import get_array_module, to_device
from .ops import get_kernels


@dataclass(frozen=True)
class Schedule:
    """The learning rate over a run: linear warmup from 0 over ``warmup_epochs``, then ``shape``: constant, or
    cosine or linear decay to zero at the end of ``epochs``; ``lr`` is its peak."""
    lr: float
    epochs: int
    warmup_epochs: float = 0.0
    shape: str = "constant"             # "constant" | "cosine" | "linear"


def lr_at(schedule: Schedule, step, steps_per_epoch):
    """The learning rate at global step ``step`` of ``schedule``, with ``steps_per_epoch`` steps an epoch."""
    total = schedule.epochs * steps_per_epoch
    warmup = schedule.warmup_epochs * steps_per_epoch
    if step < warmup:
        return schedule.lr * (step + 1) / warmup
    if schedule.shape == "constant":
        return schedule.lr
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule.shape == "linear":
        return schedule.lr * (1.0 - progress)
    return schedule.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(params: dict, weight_decay: float):
    """Two groups: weight matrices and conv kernels (ndim >= 2, named *.weight) decay; biases,
    LayerNorm weights, the [CLS] token and position embeddings do not."""
    decay = [k for k, p in params.items() if k.endswith(".weight") and p.ndim >= 2]
    no_decay = [k for k in params if k not in set(decay)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Optimizer:
    """Base: ``model`` is a ViT or any Layer tree; its parameters are put into flat buffers
    (``Layer.flatten``) if they are not already, and every step updates the whole buffer.

    ``param_groups``: None (one group, all parameters, the defaults) or a list of
    dicts ``{"params": [names], <hyperparameter overrides>}`` covering each name once.
    Groups may set their own ``lr`` and ``weight_decay`` (the per-element values live in
    one vector each); the other hyper-parameters are one value for all.

    The step's scalars (learning rate, bias corrections) are 0-d arrays on the model's
    device, refreshed in place each step, so a captured GPU step reads the new values.
    """

    PER_GROUP = ("lr", "weight_decay")
    SLOTS = ()              # the names of the state arrays a step keeps (e.g. exp_avg)

    def __init__(self, model, defaults: dict, param_groups=None):
        self.model = model
        self.flat = model.owner("optimise")
        names = self.flat.names()
        for key, value in defaults.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"optimiser {key} must be finite, got {value}")
        if defaults.get("lr", 0.0) < 0:
            raise ValueError(f"learning rate must be >= 0, got {defaults['lr']}")
        if param_groups is None:
            param_groups = [{"params": names}]
        seen = []
        self.param_groups = []
        for group in param_groups:
            unknown = [k for k in group["params"] if k not in self.flat.layout]
            if unknown:
                raise ValueError(f"parameter group names unknown parameters {unknown}")
            shared = [k for k in group if k != "params" and k not in self.PER_GROUP and group[k] != defaults.get(k)]
            if shared:
                raise ValueError(f"parameter groups may set their own {list(self.PER_GROUP)} only; "
                                 f"{shared} must be given to the optimiser itself")
            seen += list(group["params"])
            self.param_groups.append({**defaults, **group, "params": list(group["params"])})
        dup = sorted({k for k in seen if seen.count(k) > 1})
        missing = [k for k in names if k not in seen]
        if dup or missing:
            raise ValueError(f"parameter groups must cover each parameter once: duplicated {dup}, missing {missing}")
        self.defaults = defaults
        self._slots = {}      # slot name -> Companion (an array of the flat layout, npvit/flat.py)
        self.step_count = 0
        self.scalars = {}     # name -> 0-d device array, refreshed in place
        self._per_group = {}  # "lr" / "weight_decay" -> a float, or a Companion where groups differ
        self._sync_group_vectors()

    # -- per-element hyper-parameters -------------------------------------------
    def _group_value(self, key):
        """``key``'s value over the flat buffer: a float when every group agrees, else a per-element vector."""
        values = {g[key] for g in self.param_groups}
        if len(values) == 1:
            return float(values.pop())
        v = np.empty(self.flat.size, dtype=self.flat.dtype)
        for g in self.param_groups:
            for name in g["params"]:
                self.flat.view(v, name)[...] = g[key]
        return self.flat.companion(to_device(v, self.flat.xp))

    def _sync_group_vectors(self):
        self._per_group = {key: self._group_value(key) for key in self.PER_GROUP}

    def group_vector(self, key):
        """The per-element value of ``key`` (a host float when every group agrees, else a device vector)."""
        value = self._per_group[key]
        return value if isinstance(value, float) else value.array

    @property
    def wd(self):
        return self.group_vector("weight_decay")

    def scalar(self, name, value):
        """A 0-d device array holding ``value``, the same array every step (written in place)."""
        a = self.scalars.get(name)
        if a is None or a.dtype != self.flat.dtype or type(a) is not type(self.flat.params):
            a = self.scalars[name] = self.flat.xp.zeros((), dtype=self.flat.dtype)
        a.fill(value)
        return a

    @property
    def kernels(self):
        """The model's kernel set (npvit/ops), which does the update's arithmetic."""
        kernels = getattr(self.model, "kernels", None)
        return kernels if kernels is not None else get_kernels("reference")

    def lr(self):
        """The learning rate: a 0-d device array, or a vector where groups differ."""
        value = self._per_group["lr"]
        return self.scalar("lr", value) if isinstance(value, float) else value.array

    def zero_grad(self):
        self.model.zero_grad()

    def step(self):
        """One step: the host's part (the count, the scalars written to the device), then the device's."""
        self.begin_step()
        self.apply_step()

    def begin_step(self):
        """The host's part of a step: count it and write the scalars its kernels read (``step_scalars``)."""
        self.step_count += 1
        for name, value in self.step_scalars().items():
            self.scalar(name, value)

    def apply_step(self):
        """The device's part of a step: kernels over the flat buffers that read the scalars ``begin_step`` wrote
        and nothing else of the host's, so a captured CUDA graph can replay it (npvit/training/capture.py)."""
        self.update(self.flat.params, self.flat.grads)

    def step_scalars(self) -> dict:
        """name -> value of the 0-d device scalars this step's kernels read: the learning rate where every
        group has the same one (a per-element vector otherwise, kept on the device)."""
        value = self._per_group["lr"]
        return {"lr": value} if isinstance(value, float) else {}

    def device_lr(self):
        """The learning rate as the kernels read it: the scalar ``begin_step`` wrote, or the per-element vector."""
        value = self._per_group["lr"]
        return self.scalars["lr"] if isinstance(value, float) else value.array

    def update(self, p, g):  # pragma: no cover - abstract
        raise NotImplementedError

    def set_lr(self, lr):
        for group in self.param_groups:
            group["lr"] = lr
        self._per_group["lr"] = float(lr)

    def slot(self, name):
        """Optimiser state over the flat buffer (zeros at first use)."""
        if name not in self._slots:
            self._slots[name] = self.flat.companion()
        return self._slots[name].array

    @property
    def state(self) -> dict:
        """slot name -> its array over the flat buffer (e.g. exp_avg), as the model's dtype and device are now."""
        return {name: handle.array for name, handle in self._slots.items()}

    # -- checkpointing --------------------------------------------------------
    def state_dict(self) -> dict:
        """Host arrays: ``state.{name}.{slot}`` per parameter, plus ``step_count`` and each group's ``lr``."""
        out = {"step_count": np.array(self.step_count)}
        for i, group in enumerate(self.param_groups):
            out[f"group.{i}.lr"] = np.array(group["lr"])
        for slot, array in self.state.items():
            out.update({f"state.{name}.{slot}": a for name, a in self.flat.to_dict(array).items()})
        return out

    def load_state_dict(self, sd: dict):
        self.step_count = int(sd["step_count"])
        for i, group in enumerate(self.param_groups):
            group["lr"] = float(sd[f"group.{i}.lr"])
        self._sync_group_vectors()
        slots = {}
        for key, value in sd.items():
            if key.startswith("state."):
                name, slot = key[len("state."):].rsplit(".", 1)
                slots.setdefault(slot, {})[name] = value
        self._slots = {slot: self.flat.companion(self.flat.from_dict(arrays, f"optimiser state {slot!r}"))
                       for slot, arrays in slots.items()}
        return self


class SGD(Optimizer):
    """torch.optim.SGD over the flat buffer: g += wd p; buf = mu buf + (1 - dampening) g (buf = g at the
    first step); g = g + mu buf (Nesterov) or buf; p -= lr g."""

    def __init__(self, model, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0,
                 param_groups=None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(model, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                     dampening=dampening), param_groups)

    def update(self, p, g):
        d = self.defaults
        first = "momentum_buffer" not in self._slots
        buf = self.slot("momentum_buffer") if d["momentum"] else None
        self.kernels.sgd_update(p, g, buf, self.device_lr(), self.wd, d["momentum"], d["dampening"], d["nesterov"], first)


class AdamW(Optimizer):
    """torch.optim.AdamW over the flat buffer: decoupled weight decay, then Adam with bias correction.

        p *= 1 - lr wd
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, param_groups=None):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW betas must be in [0, 1), got {betas}")
        super().__init__(model, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), param_groups)

    def step_scalars(self) -> dict:
        (b1, b2), t = self.defaults["betas"], self.step_count
        return {**super().step_scalars(), "inv_bc1": 1.0 / (1.0 - b1 ** t),
                "inv_sqrt_bc2": 1.0 / math.sqrt(1.0 - b2 ** t)}

    def update(self, p, g):
        (b1, b2), eps = self.defaults["betas"], self.defaults["eps"]
        # the model's kernel set does the arithmetic (reference: NumPy/CuPy operators; fused: one GPU kernel)
        self.kernels.adamw_update(p, g, self.slot("exp_avg"), self.slot("exp_avg_sq"), self.device_lr(), self.wd,
                                  b1, b2, eps, self.scalars["inv_bc1"], self.scalars["inv_sqrt_bc2"])


def clip_grad_norm(grads, max_norm: float):
    """Scale gradients in place so their global L2 norm is at most ``max_norm`` (as
    torch.nn.utils.clip_grad_norm_: factor max_norm / (norm + 1e-6), capped at 1).

    ``grads``: a model's flat gradient buffer (one norm, one scale) or a dict of arrays.
    Returns the norm before clipping as a 0-d array on the gradients' device: nothing is
    read back to the host, so a GPU step does not wait here."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    gs = list(grads.values()) if isinstance(grads, dict) else [grads]
    xp = get_array_module(*gs)
    total = xp.sqrt(sum((g.astype(xp.float64) ** 2).sum() for g in gs))
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in gs:
        g *= coef.astype(g.dtype)
    return total
