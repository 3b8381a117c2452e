"""Optimisers over named parameters: SGD (momentum, Nesterov) and AdamW (Loshchilov & Hutter 2019),
with parameter groups and global-norm gradient clipping. Updates match torch.optim step for step.

An optimiser holds the model's live ``parameters()`` and ``gradients()`` dicts
and updates the arrays in place, so the model sees every step.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, to_device, to_numpy


def weight_decay_groups(params: dict, weight_decay: float):
    """Two groups: weight matrices and conv kernels (ndim >= 2, named *.weight) decay; biases,
    LayerNorm weights, the [CLS] token and position embeddings do not."""
    decay = [k for k, p in params.items() if k.endswith(".weight") and p.ndim >= 2]
    no_decay = [k for k in params if k not in set(decay)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Optimizer:
    """Base: ``model`` is anything with ``parameters()`` and ``gradients()`` dicts (a ViT or a Layer).

    ``param_groups``: None (one group, all parameters, the defaults) or a list of
    dicts ``{"params": [names], <hyperparameter overrides>}`` covering each name once.
    """

    def __init__(self, model, defaults: dict, param_groups=None):
        self.params = model.parameters()
        self.grads = model.gradients()
        for key, value in defaults.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"optimiser {key} must be finite, got {value}")
        if defaults.get("lr", 0.0) < 0:
            raise ValueError(f"learning rate must be >= 0, got {defaults['lr']}")
        if param_groups is None:
            param_groups = [{"params": list(self.params)}]
        seen = []
        self.param_groups = []
        for group in param_groups:
            unknown = [k for k in group["params"] if k not in self.params]
            if unknown:
                raise ValueError(f"parameter group names unknown parameters {unknown}")
            seen += list(group["params"])
            self.param_groups.append({**defaults, **group, "params": list(group["params"])})
        dup = sorted({k for k in seen if seen.count(k) > 1})
        missing = [k for k in self.params if k not in seen]
        if dup or missing:
            raise ValueError(f"parameter groups must cover each parameter once: duplicated {dup}, missing {missing}")
        self.state = {}       # name -> dict of state arrays
        self.step_count = 0

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def step(self):
        self.step_count += 1
        for group in self.param_groups:
            for name in group["params"]:
                self.update(name, self.params[name], self.grads[name], group)

    def update(self, name, p, g, group):  # pragma: no cover - abstract
        raise NotImplementedError

    def set_lr(self, lr):
        for group in self.param_groups:
            group["lr"] = lr

    # -- checkpointing --------------------------------------------------------
    def state_dict(self) -> dict:
        """Host arrays: ``state.{name}.{slot}`` plus ``step_count`` and each group's ``lr``."""
        out = {"step_count": np.array(self.step_count)}
        for i, group in enumerate(self.param_groups):
            out[f"group.{i}.lr"] = np.array(group["lr"])
        for name, slots in self.state.items():
            for slot, value in slots.items():
                out[f"state.{name}.{slot}"] = to_numpy(value).copy()
        return out

    def load_state_dict(self, sd: dict):
        self.step_count = int(sd["step_count"])
        for i, group in enumerate(self.param_groups):
            group["lr"] = float(sd[f"group.{i}.lr"])
        self.state = {}
        for key, value in sd.items():
            if key.startswith("state."):
                name, slot = key[len("state."):].rsplit(".", 1)
                if name not in self.params:
                    raise ValueError(f"optimiser state names unknown parameter {name!r}")
                xp = get_array_module(self.params[name])
                self.state.setdefault(name, {})[slot] = to_device(np.asarray(value, self.params[name].dtype), xp)
        return self


class SGD(Optimizer):
    """torch.optim.SGD: g += wd p; buf = mu buf + (1 - dampening) g (buf = g at the first step);
    g = g + mu buf (Nesterov) or buf; p -= lr g."""

    def __init__(self, model, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0,
                 param_groups=None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(model, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                     dampening=dampening), param_groups)

    def update(self, name, p, g, group):
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p
        mu = group["momentum"]
        if mu:
            st = self.state.setdefault(name, {})
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = g.copy()
            else:
                buf = st["momentum_buffer"]
                buf *= mu
                buf += (1.0 - group["dampening"]) * g
            buf = st["momentum_buffer"]
            g = g + mu * buf if group["nesterov"] else buf
        p -= group["lr"] * g


class AdamW(Optimizer):
    """torch.optim.AdamW: decoupled weight decay, then Adam with bias correction.

        p *= 1 - lr wd
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, param_groups=None):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"AdamW betas must be in [0, 1), got {betas}")
        super().__init__(model, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), param_groups)

    def update(self, name, p, g, group):
        xp = get_array_module(p)
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t = self.step_count
        st = self.state.setdefault(name, {})
        if "exp_avg" not in st:
            st["exp_avg"], st["exp_avg_sq"] = xp.zeros_like(p), xp.zeros_like(p)
        m, v = st["exp_avg"], st["exp_avg_sq"]
        if wd:
            p *= 1.0 - lr * wd
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        denom = xp.sqrt(v)
        denom /= math.sqrt(1.0 - b2 ** t)
        denom += eps
        p -= (lr / (1.0 - b1 ** t)) * (m / denom)


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm`` (as
    torch.nn.utils.clip_grad_norm_: factor max_norm / (norm + 1e-6), capped at 1).

    Returns the norm before clipping as a 0-d array on the gradients' device: nothing is
    read back to the host, so a GPU step does not wait here."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    gs = list(grads.values())
    xp = get_array_module(*gs)
    total = xp.sqrt(sum((g.astype(xp.float64) ** 2).sum() for g in gs))
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in gs:
        g *= coef.astype(g.dtype)
    return total
