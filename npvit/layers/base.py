"""The Layer base class: named parameters, named gradients, train/eval.

A layer owns ``params`` and ``grads``, two dicts with the same keys (PyTorch's
names, e.g. "weight", "bias"). ``forward(x)`` caches what ``backward`` needs;
``backward(dy)`` returns ``dx`` and *adds* into ``grads``. Sub-layers are plain
attributes (a list of layers is numbered like torch's ModuleList), so the full
name of a parameter is its attribute path: ``encoder.blocks.0.mlp.dense_1.weight``.

``flatten()`` moves every parameter of a tree into one contiguous array
(``flat_params``) and every gradient into another (``flat_grads``); the dict
entries become views into them, so layers read and write them as before while
``zero_grad`` is one fill, an optimiser step a handful of array operations over
everything, clipping one norm, and a gradient all-reduce one call.
"""
from __future__ import annotations

import copy
import types

import numpy as np

from ..backend import get_array_module, seed_for, to_device
from ..ops import get_kernels, numpy_fast


class Layer:
    # The kernel set this layer's math runs on (npvit/ops): the fast one unless use_kernels says otherwise.
    kernels = numpy_fast

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.training = True

    def add_param(self, name, value):
        """Register a parameter and a zero gradient of the same shape and dtype."""
        self.params[name] = value
        self.grads[name] = get_array_module(value).zeros_like(value)

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
        if getattr(self, "flat_grads", None) is not None:
            self.flat_grads.fill(0)
            return
        for _, layer in self.named_layers():
            for g in layer.grads.values():
                g.fill(0)

    # -- flat buffers -------------------------------------------------------
    def flatten(self):
        """All parameters in one contiguous array, all gradients in another (same dtype, same device);
        ``params``/``grads`` entries become views into them. Values are kept. Returns self."""
        params = self.parameters()
        if not params:
            raise ValueError("flatten: this layer tree has no parameters")
        dtypes = {p.dtype for p in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"flatten: parameters of one tree must share a dtype, found {sorted(map(str, dtypes))}")
        xp = get_array_module(*params.values())
        flat = xp.empty(sum(p.size for p in params.values()), dtype=dtypes.pop())
        self.flat_index = {}                      # full name -> (offset, size, shape) in the flat buffers
        offset = 0
        for lname, layer in self.named_layers():
            for k, p in layer.params.items():
                view = flat[offset:offset + p.size].reshape(p.shape)
                view[...] = p
                layer.params[k] = view
                self.flat_index[f"{lname}.{k}" if lname else k] = (offset, p.size, p.shape)
                offset += p.size
        self.flat_params = flat
        return self.flatten_grads()

    def _relink(self):
        """Make every ``params``/``grads`` entry a view into the flat buffers again (after a deep copy,
        which copies views as separate arrays)."""
        for lname, layer in self.named_layers():
            for k in layer.params:
                offset, size, shape = self.flat_index[f"{lname}.{k}" if lname else k]
                layer.params[k] = self.flat_params[offset:offset + size].reshape(shape)
                layer.grads[k] = self.flat_grads[offset:offset + size].reshape(shape)

    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            shared = isinstance(value, types.ModuleType)          # the kernel set is shared, not copied
            setattr(clone, name, value if shared else copy.deepcopy(value, memo))
        if getattr(clone, "flat_params", None) is not None:
            clone._relink()
        return clone

    def flatten_grads(self):
        """A fresh zero ``flat_grads`` with every ``grads`` entry a view into it (replicas get their own)."""
        xp = get_array_module(self.flat_params)
        self.flat_grads = xp.zeros_like(self.flat_params)
        for lname, layer in self.named_layers():
            for k in layer.grads:
                offset, size, shape = self.flat_index[f"{lname}.{k}" if lname else k]
                layer.grads[k] = self.flat_grads[offset:offset + size].reshape(shape)
        return self

    def train(self, mode: bool = True):
        for _, layer in self.named_layers():
            layer.training = mode
        return self

    def eval(self):
        return self.train(False)

    def use_kernels(self, kernels, backend="numpy"):
        """Run this layer and every layer below it on the kernel set ``kernels`` ("auto", "numba", "fast",
        "reference", or a module with the same functions) for arrays of ``backend``. Returns self."""
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
        """Cast every parameter (and its gradient) to ``dtype`` in place of the old arrays (and of the
        flat buffers, rebuilt if the tree had them)."""
        for _, layer in self.named_layers():
            for k in layer.params:
                layer.params[k] = layer.params[k].astype(dtype)
                layer.grads[k] = layer.grads[k].astype(dtype)
        return self._reflatten()

    def to(self, xp):
        """Move every parameter and gradient to ``xp``'s device (flat buffers rebuilt there)."""
        for _, layer in self.named_layers():
            for k in layer.params:
                layer.params[k] = to_device(layer.params[k], xp)
                layer.grads[k] = to_device(layer.grads[k], xp)
        return self._reflatten()

    def _reflatten(self):
        if getattr(self, "flat_params", None) is not None:
            grads = self.gradients()
            self.flatten()
            for name, g in self.gradients().items():
                g[...] = grads[name]
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
        if getattr(self, "flat_params", None) is not None:
            clone.flatten_grads()                 # shared flat_params, its own flat_grads
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
