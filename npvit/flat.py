"""The one owner of a layer tree's flat buffers: every parameter a view into one array, every gradient
a view into another, and the layout (names, offsets, shapes, dtype, device) that says where each is.

Why flat: ``zero_grad`` is one fill, an optimiser step a handful of array operations over
everything (one fused kernel on a GPU), clipping one norm, a gradient all-reduce one call.

Why one owner: the optimiser's moments, the moving average of the weights, checkpoints,
DataParallel's replicas and MPI's all-reduce all work on arrays of this layout. They ask this
object for the buffers and for the mapping between a flat array and named arrays, instead of
walking the layout themselves; and arrays of the layout that others keep (``companion()``) follow
the parameters when the model is cast or moved, so nobody holds a stale buffer.
"""
from __future__ import annotations

import copy
import weakref
from typing import NamedTuple

import numpy as np

from .backend import get_array_module, to_device, to_numpy


class Slot(NamedTuple):
    offset: int
    size: int
    shape: tuple


class Companion:
    """An array of the flat layout kept by someone else (an optimiser's moment, the moving average):
    ``.array`` is always on the parameters' device, in their dtype (its owner converts it)."""

    __slots__ = ("array", "__weakref__")

    def __init__(self, array):
        self.array = array


class Views(dict):
    """A flat layer's ``params`` or ``grads``: each entry a view into the owner's buffer. Assigning to an entry
    writes the values into its view (``layer.params["weight"] = w`` copies w in), so the buffer stays the one
    place the values live; a new name or another shape is a ValueError."""

    def __setitem__(self, key, value):
        if key not in self:
            raise ValueError(f"{key!r} is not a parameter of this layer (it has {list(self)}): a layer's parameters "
                             f"are fixed when it is built")
        view = dict.__getitem__(self, key)
        if tuple(np.shape(value)) != view.shape:
            raise ValueError(f"{key!r} has shape {view.shape}; got an array of shape {tuple(np.shape(value))}")
        view[...] = value

    def bind(self, key, view):
        """Make entry ``key`` the view ``view`` (the owner's relinking)."""
        dict.__setitem__(self, key, view)

    def __deepcopy__(self, memo):
        return Views({k: copy.deepcopy(v, memo) for k, v in self.items()})


def _bind(layer, key, param_view, grad_view):
    """Entry ``key`` of the layer's ``params`` and ``grads``: views (making the dicts Views where they are not)."""
    for attr, view in (("params", param_view), ("grads", grad_view)):
        if view is None:
            continue
        entries = getattr(layer, attr)
        if not isinstance(entries, Views):
            entries = Views(entries)
            setattr(layer, attr, entries)
        entries.bind(key, view)


class FlatParameters:
    """``FlatParameters(tree, dtype=None, xp=None)``: moves the values of every parameter of ``tree`` (a Layer)
    into one contiguous array, ``params`` (in ``dtype`` on ``xp``'s device if given, else as they are), and
    gives every gradient a zero view into another, ``grads``; each layer's ``params``/``grads`` dict entries
    become views into them, in the tree's order. Every layer below ``tree`` that has parameters gets a
    :class:`FlatWindow` as its ``flat``: its own part of these buffers (a subtree's parameters are
    contiguous, the tree's order being depth first)."""

    def __init__(self, tree, dtype=None, xp=None):
        self.entries = [(f"{lname}.{k}" if lname else k, layer, k)
                        for lname, layer in tree.named_layers() for k in layer.params]   # (name, layer, key)
        if not self.entries:
            raise ValueError("flatten: this layer tree has no parameters")
        values = [layer.params[k] for _, layer, k in self.entries]
        dtypes = {v.dtype for v in values}
        if len(dtypes) != 1 and dtype is None:
            raise ValueError(f"flatten: parameters of one tree must share a dtype, found {sorted(map(str, dtypes))}")
        self.layout, offset = {}, 0
        for (name, _, _), v in zip(self.entries, values):
            self.layout[name] = Slot(offset, v.size, tuple(v.shape))
            offset += v.size
        xp = xp or get_array_module(*values)
        self.root = tree
        self.params = xp.empty(offset, dtype=dtype or dtypes.pop())
        for (name, _, _), v in zip(self.entries, values):
            self.view(self.params, name)[...] = to_device(v, xp)      # cast (and moved) on the way in
        self.grads = xp.zeros_like(self.params)
        self._companions = weakref.WeakSet()
        self.relink()

    # -- what others ask ----------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.params.size

    @property
    def dtype(self):
        return self.params.dtype

    @property
    def xp(self):
        return get_array_module(self.params)

    def names(self):
        return list(self.layout)

    def view(self, flat, name):
        """Parameter ``name``'s part of ``flat`` (any array of this layout), in its shape: a view."""
        offset, size, shape = self.layout[name]
        return flat[offset:offset + size].reshape(shape)

    def to_dict(self, flat) -> dict:
        """Host (NumPy) copies of every parameter's part of ``flat``, by name."""
        host = to_numpy(flat)
        return {name: self.view(host, name).copy() for name in self.layout}

    def from_dict(self, arrays: dict, what="arrays"):
        """An array of this layout on the parameters' device from named arrays; ValueError naming every
        missing, unknown or mis-shaped one (``what`` says what they are)."""
        missing = [n for n in self.layout if n not in arrays]
        unknown = [n for n in arrays if n not in self.layout]
        shapes = [f"{n}: expected {self.layout[n].shape}, got {tuple(np.shape(arrays[n]))}"
                  for n in self.layout if n in arrays and tuple(np.shape(arrays[n])) != self.layout[n].shape]
        if missing or unknown or shapes:
            problems = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else []) \
                + (["shape mismatch: " + "; ".join(shapes)] if shapes else [])
            raise ValueError(f"{what} do not fit the model: " + " | ".join(problems))
        host = np.empty(self.size, dtype=self.dtype)
        for name in self.layout:
            self.view(host, name)[...] = np.asarray(arrays[name])
        return to_device(host, self.xp)

    def companion(self, initial=None) -> Companion:
        """A new array of this layout that follows the parameters' dtype and device: zeros, or a copy of
        ``initial`` (an array of the layout)."""
        array = self.xp.zeros_like(self.params) if initial is None else initial.astype(self.dtype, copy=True)
        handle = Companion(array)
        self._companions.add(handle)
        return handle

    # -- casting and moving: every array of the layout at once ---------------------------------------
    def cast(self, dtype):
        """Every array of the layout in ``dtype`` (values kept); the layers' views follow."""
        return self._convert(lambda a: a.astype(dtype))

    def move(self, xp):
        """Every array of the layout on ``xp``'s device (values kept); the layers' views follow."""
        return self._convert(lambda a: to_device(a, xp))

    def _convert(self, convert):
        self.params, self.grads = convert(self.params), convert(self.grads)
        for handle in list(self._companions):
            handle.array = convert(handle.array)
        self.relink()
        return self

    # -- the layers' views -----------------------------------------------------------------------
    def relink(self):
        """Make every layer's ``params``/``grads`` entry a view into the buffers (again), and every layer below
        the root that has parameters a window of them."""
        for name, layer, k in self.entries:
            _bind(layer, k, self.view(self.params, name), self.view(self.grads, name))
        self._windows()

    def _windows(self):
        for prefix, layer in self.root.named_layers():
            slots = [slot for name, slot in self.layout.items() if name.startswith(prefix + ".")]
            if prefix and slots:
                layer.flat = FlatWindow(self, slots[0].offset, slots[-1].offset + slots[-1].size)

    def replica(self, tree):
        """The owner for ``tree``, a replica of this owner's tree (the same layout, built by
        ``Layer.replicate``): the same parameter buffer, gradients of its own."""
        twin = copy.copy(self)
        twin.entries = [(f"{lname}.{k}" if lname else k, layer, k)
                        for lname, layer in tree.named_layers() for k in layer.params]
        if [e[0] for e in twin.entries] != [e[0] for e in self.entries]:
            raise ValueError("a replica must have its original's parameters")
        twin.root = tree
        twin.grads = self.xp.zeros_like(self.params)
        twin._companions = weakref.WeakSet()
        for name, layer, k in twin.entries:
            _bind(layer, k, None, twin.view(twin.grads, name))
        twin._windows()
        return twin

    def __deepcopy__(self, memo):
        """Copies of both buffers, entries pointing at the copied layers; the copy of the tree relinks its
        views once it is whole (``Layer.__deepcopy__``). Companions stay with their holders."""
        twin = self.__class__.__new__(self.__class__)
        memo[id(self)] = twin
        twin.layout = self.layout
        twin.params, twin.grads = self.params.copy(), self.grads.copy()
        twin.root = copy.deepcopy(self.root, memo)
        twin.entries = [(name, copy.deepcopy(layer, memo), k) for name, layer, k in self.entries]
        twin._companions = weakref.WeakSet()
        return twin


class FlatWindow:
    """The ``flat`` of a layer below the root of a flattened tree: its own part of the root's buffers
    (``params``, ``grads``: views, contiguous), for what a part of a model does on its own (zero its
    gradients). What changes the buffers themselves (casting, moving, an optimiser's layout) is asked of the
    root, ``owner``: a part of a tree cannot change the dtype or device of its parameters alone."""

    def __init__(self, owner: FlatParameters, start: int, stop: int):
        self.owner, self.start, self.stop = owner, start, stop

    @property
    def params(self):
        return self.owner.params[self.start:self.stop]

    @property
    def grads(self):
        return self.owner.grads[self.start:self.stop]
