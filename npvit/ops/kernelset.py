"""KernelSet: the table that holds one implementation of the contract (npvit/ops/contract.py), its
primitives checked against the contract's signatures and its composites (npvit/ops/composites.py)
bound to it. A set's file ends with its table:

    FAST = KernelSet("fast", backends=("numpy", "cupy"), primitives={
        **own(reduce_sum, layernorm_forward, ...),          # what this file defines
        **taken(reference.REFERENCE, "matmul", ...)})       # what it takes from another set

and one line in npvit/ops/__init__.py's REGISTRY makes it a choice of ``--kernels``.
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Optional

from . import composites
from .contract import COMPOSITE_NAMES, PRIMITIVE_NAMES, PRIMITIVES


def own(*functions) -> dict:
    """The primitives a set's file defines itself, by their names: ``own(layernorm_forward, ...)``."""
    return {f.__name__: f for f in functions}


def taken(kernel_set, *names) -> dict:
    """The primitives a set takes from another set, by name: ``taken(REFERENCE, "matmul", ...)``."""
    return {name: getattr(kernel_set, name) for name in names}


def signature_of(fn):
    """A function's parameters as (name, kind, default) triples: what two signatures must share."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def check_signature(name, fn, spec):
    """Raise TypeError unless ``fn`` takes exactly the parameters of ``spec``, naming both."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {fn!r}")
    if signature_of(fn) != signature_of(spec):
        raise TypeError(f"{name}{inspect.signature(fn)} does not have the contract's signature "
                        f"{name.rsplit('.', 1)[-1]}{inspect.signature(spec)}")


class KernelSet:
    """One implementation of the contract: ``KernelSet(name, backends, primitives, fused=None)``.

    ``primitives``: every name of PRIMITIVE_NAMES -> its function, with the contract's signature.
    ``fused``: composite name -> a fused replacement with the composite's signature (rare).
    The set's attributes are its primitives and its composites (``ops.attention_forward(...)``),
    the composites bound to this set unless fused.
    """

    def __init__(self, name, backends, primitives, fused=None):
        missing = [n for n in PRIMITIVE_NAMES if n not in primitives]
        unknown = [n for n in primitives if n not in PRIMITIVE_NAMES]
        fused = dict(fused or {})
        not_composites = [n for n in fused if n not in COMPOSITE_NAMES]
        if missing or unknown or not_composites:
            raise TypeError(f"kernel set {name!r}: missing primitives {missing}, unknown primitives {unknown}, "
                            f"fused replacements of no composite {not_composites}")
        self.name, self.backends = name, tuple(backends)
        for spec in PRIMITIVES:
            check_signature(f"{name}.{spec.__name__}", primitives[spec.__name__], spec)
            setattr(self, spec.__name__, primitives[spec.__name__])
        for composite in COMPOSITE_NAMES:
            written_once = getattr(composites, composite)
            if composite in fused:
                check_signature(f"{name}.{composite}", fused[composite], partial(written_once, None))
            setattr(self, composite, fused.get(composite, partial(written_once, self)))
        self.fused = tuple(fused)

    def origin(self, name) -> Optional[str]:
        """The module a primitive or composite of this set comes from (e.g. "npvit.ops.reference")."""
        fn = getattr(self, name)
        return getattr(fn.func if isinstance(fn, partial) else fn, "__module__", None)

    def __repr__(self):
        return f"<kernel set {self.name!r} for {'/'.join(self.backends)}>"
