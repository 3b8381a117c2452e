"""The Layer base class: named parameters, named gradients, train/eval, the kernel set it runs on.

A layer owns ``params`` and ``grads``, two dicts with the same keys (PyTorch's
names, e.g. "weight", "bias"). ``forward(x)`` caches what ``backward`` needs;
``backward(dy)`` returns ``dx`` and *adds* into ``grads``. Sub-layers are plain
attributes (a list of layers is numbered like torch's ModuleList), so the full
name of a parameter is its attribute path: ``encoder.blocks.0.mlp.dense_1.weight``.

``flatten()`` gives a tree its flat buffers (npvit/flat.py, ``self.flat``): the
dict entries become views into one parameter array and one gradient array, which
the optimiser, the moving average, checkpoints and all-reduce ask for through it.
"""
from __future__ import annotations

import copy

import numpy as np

from ..backend import get_array_module, seed_for, to_device
from ..flat import FlatParameters
from ..ops import get_kernels
from ..ops.kernelset import KernelSet
from ..ops.reference import REFERENCE


class Layer:
    # The kernel set this layer's math runs on (npvit/ops): the reference, the one to read, unless
    # use_kernels says otherwise (a ViT picks the fastest that runs, kernels="auto").
    kernels = REFERENCE
    flat = None             # the flat buffers' owner (npvit/flat.py), once flatten() has made it

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.training = True

    def add_param(self, name, value):
        """Register a parameter and a zero gradient of the same shape and dtype."""
        self.params[name] = value
        self.grads[name] = get_array_module(value).zeros_like(value)

    def accumulate(self, **grads):
        """Add each parameter gradient into ``grads`` (None: the layer has no such parameter)."""
        for name, g in grads.items():
            if g is not None:
                self.grads[name] += g

    # -- tree walking -------------------------------------------------------
    def children(self):
        """(name, layer) for each direct sub-layer, in definition order."""
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
                for i, layer in enumerate(value):
                    yield f"{name}.{i}", layer

    def named_layers(self, prefix=""):
        """(full name, layer) for this layer and every layer below it."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_layers(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> dict:
        """Every parameter below this layer by full name (live arrays, not copies)."""
        return {f"{lname}.{p}" if lname else p: arr
                for lname, layer in self.named_layers() for p, arr in layer.params.items()}

    def gradients(self) -> dict:
        """Every gradient below this layer, with the same keys as ``parameters()``."""
        return {f"{lname}.{p}" if lname else p: arr
                for lname, layer in self.named_layers() for p, arr in layer.grads.items()}

    def zero_grad(self):
        if self.flat is not None:
            self.flat.grads.fill(0)
            return
        for _, layer in self.named_layers():
            for g in layer.grads.values():
                g.fill(0)

    # -- flat buffers -------------------------------------------------------
    def flatten(self):
        """All parameters in one contiguous array, all gradients in another, owned by ``self.flat``
        (npvit/flat.py); ``params``/``grads`` entries become views into them. Values are kept. Returns self."""
        self.flat = FlatParameters(self)
        return self

    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            shared = isinstance(value, KernelSet)                 # the kernel set is shared, not copied
            setattr(clone, name, value if shared else copy.deepcopy(value, memo))
        if clone.flat is not None:
            clone.flat.relink()
        return clone

    def train(self, mode: bool = True):
        for _, layer in self.named_layers():
            layer.training = mode
        return self

    def eval(self):
        return self.train(False)

    def use_kernels(self, kernels, backend="numpy"):
        """Run this layer and every layer below it on the kernel set ``kernels`` (a name of npvit.ops.NAMED,
        or a KernelSet) for arrays of ``backend``. Returns self."""
        chosen = get_kernels(kernels, backend)
        for _, layer in self.named_layers():
            layer.kernels = chosen
        return self

    def reseed(self, seed):
        """Seed every random layer below this one (dropout) from ``seed`` and its place in the tree:
        the one place a model's randomness is set. Returns self."""
        for i, (_, layer) in enumerate(self.named_layers()):
            if hasattr(layer, "rng"):
                layer.seed, layer.rng = seed_for(seed, i), None
        return self

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters().values()))

    def astype(self, dtype):
        """Cast every parameter (and its gradient) to ``dtype``: through the flat buffers' owner where the
        tree has one (everything of its layout follows), else array by array."""
        if self.flat is not None:
            self.flat.cast(dtype)
            return self
        for _, layer in self.named_layers():
            for k in layer.params:
                layer.params[k] = layer.params[k].astype(dtype)
                layer.grads[k] = layer.grads[k].astype(dtype)
        return self

    def to(self, xp):
        """Move every parameter and gradient to ``xp``'s device, as ``astype`` does."""
        if self.flat is not None:
            self.flat.move(xp)
            return self
        for _, layer in self.named_layers():
            for k in layer.params:
                layer.params[k] = to_device(layer.params[k], xp)
                layer.grads[k] = to_device(layer.grads[k], xp)
        return self

    def replicate(self):
        """A copy of this layer tree that shares the parameters (the same ``params`` dicts) and has its
        own gradients and forward caches: replicas can run shards of one batch side by side."""
        clone = copy.copy(self)
        clone.grads = {k: get_array_module(g).zeros_like(g) for k, g in self.grads.items()}
        for name, value in vars(self).items():
            if isinstance(value, Layer):
                setattr(clone, name, value.replicate())
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Layer) for v in value):
                setattr(clone, name, type(value)(v.replicate() for v in value))
        if self.flat is not None:
            clone.flat = self.flat.replica(clone)     # the same parameter buffer, its own gradient buffer
        return clone

    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - abstract
        raise NotImplementedError


def normal(rng: np.random.Generator, shape, std):
    """N(0, std^2) on the host in float64 (cast and moved by the model), as torch.nn.init.normal_."""
    return rng.normal(0.0, std, size=shape)


def trunc_normal(rng: np.random.Generator, shape, std, a=-2.0, b=2.0):
    """N(0, std^2) resampled until inside [a, b], as torch.nn.init.trunc_normal_.

    Note torch's bounds are absolute values, not multiples of std: with the
    article's std 0.02 this almost never truncates.
    """
    out = rng.normal(0.0, std, size=shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    return out
