"""The Layer base class: named parameters, named gradients, train/eval, the kernel set it runs on.

A layer owns ``params`` and ``grads``, two dicts with the same keys (PyTorch's
names, e.g. "weight", "bias"). ``forward(x)`` caches what ``backward`` needs;
``backward(dy)`` returns ``dx`` and *adds* into ``grads``. Sub-layers are plain
attributes (a list of layers is numbered like torch's ModuleList), so the full
name of a parameter is its attribute path: ``encoder.blocks.0.mlp.dense_1.weight``.

Parameters are flat from birth: once a layer is made (its ``__init__`` done), the
values of its parameters and of every layer below it move into one parameter array
and one gradient array (npvit/flat.py), whose owner is ``self.flat``; the dict
entries are views into them, and each layer below holds a window of them. The
optimiser, the moving average, checkpoints and all-reduce ask the owner for the
buffers. A layer built into a bigger one (a Linear inside an MLP) hands its
parameters to the bigger one's buffers, so the outermost layer owns them.
"""
from __future__ import annotations

import copy

import numpy as np

from ..backend import get_array_module, seed_for
from ..flat import FlatParameters, FlatWindow
from ..ops import get_kernels
from ..ops.kernelset import KernelSet
from ..ops.reference import REFERENCE


class _FlatFromBirth(type):
    """Makes a layer's parameters flat as soon as it is built: after the outermost ``__init__`` returns."""

    def __call__(cls, *args, **kwargs):
        layer = super().__call__(*args, **kwargs)
        if layer.flat is None and any(l.params for _, l in layer.named_layers()):
            layer.flatten()
        return layer


class Layer(metaclass=_FlatFromBirth):
    # The kernel set this layer's math runs on (npvit/ops): the reference, the one to read, unless
    # use_kernels says otherwise (a ViT picks the fastest that runs, kernels="auto").
    kernels = REFERENCE
    flat = None             # the flat buffers' owner (npvit/flat.py), or a window of its parent's; None: no parameters

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
        if self.flat is not None:                   # the owner's buffer, or this layer's window of it
            self.flat.grads.fill(0)

    # -- flat buffers -------------------------------------------------------
    def flatten(self, dtype=None, xp=None):
        """All parameters of this tree in one contiguous array, all gradients in another, owned by ``self.flat``
        (npvit/flat.py), in ``dtype`` on ``xp``'s device if given; ``params``/``grads`` entries become views into
        them and every layer below gets its window. Values are kept. Every layer is flattened when built; a
        ViT flattens itself again in its dtype and device. Returns self."""
        self.flat = FlatParameters(self, dtype, xp)
        return self

    def owner(self, doing) -> FlatParameters:
        """The owner of this layer's buffers, for ``doing`` something to all of them; a layer that is part of a
        bigger one cannot (ValueError naming what to do instead)."""
        if isinstance(self.flat, FlatWindow):
            raise ValueError(f"{doing} a {type(self).__name__} that is part of a bigger layer tree: its parameters "
                             f"live in the buffers of the tree's outermost layer ({type(self.flat.owner.root).__name__})"
                             f"; do it to that one, or to a copy of this part (copy.deepcopy)")
        if self.flat is None:
            raise ValueError(f"{doing} a {type(self).__name__}: it has no parameters")
        return self.flat

    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        alone = isinstance(self.flat, FlatWindow) and id(self.flat.owner) not in memo   # a part, copied on its own
        items = sorted(vars(self).items(), key=lambda kv: kv[0] != "flat")   # the owner first: parts find it
        for name, value in items:
            shared = isinstance(value, KernelSet)                 # the kernel set is shared, not copied
            if name == "flat" and alone:
                continue
            setattr(clone, name, value if shared else copy.deepcopy(value, memo))
        if alone:                                   # its own buffers, as if built alone
            clone.flatten()
        elif isinstance(clone.flat, FlatParameters):
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
        """Cast every parameter (and its gradient) to ``dtype``, through the flat buffers' owner: everything of
        its layout follows (an optimiser's moments, the moving average). A layer without parameters is left as
        it is. Returns self."""
        if self.flat is not None:
            self.owner("cast").cast(dtype)
        return self

    def to(self, xp):
        """Move every parameter and gradient to ``xp``'s device, as ``astype`` casts them. Returns self."""
        if self.flat is not None:
            self.owner("move").move(xp)
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
        if isinstance(self.flat, FlatParameters):     # the owner's replica; its parts get windows of it
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
