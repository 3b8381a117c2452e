"""Numerical gradient checks: does each hand-written backward match its forward?

Following Chainer's ``check_backward``: the output y is reduced to a scalar
along a fixed random direction r, L = sum(r * y), so ``backward(r)`` gives
the analytic gradient of L. For each input and parameter p we then pick a few
random unit directions u and compare the directional derivative two ways:

    analytic  = <dL/dp, u>
    numeric   = (8 (L(p + eps u) - L(p - eps u)) - (L(p + 2 eps u) - L(p - 2 eps u))) / (12 eps)
                (the fourth-order central difference, float64)
    rel error = |analytic - numeric| / max(|analytic|, |numeric|, atol)

and report the worst relative error per parameter. ``npvit gradcheck`` runs the checks listed in
npvit/checks.py (every primitive, layer and the whole model) and prints one table each.

One engine, :func:`check_gradients` (a function of named float64 arrays against their analytic
gradients), and thin wrappers that prepare its three arguments for what one usually checks:

    check_pair(forward, backward, {"x": x, "w": w})   forward(**inputs) -> (y, cache),
                                                       backward(dy, cache) -> one gradient per input
    check_layer_gradients(layer, x)                   any Layer (forward/backward, parameters, gradients)
    check_model_gradients(model, x, labels)           a ViT under softmax cross-entropy
    check_gradients(f, inputs, grads)                 anything else: a free function, a loss

Each returns a report (``print(report)`` shows the table, ``report.passed()``, ``report.hint()``
names the wrong array); the common mistakes (float32 inputs, a backward returning the wrong
number or shape of gradients, a forward that is not deterministic or changes its input) are a
GradcheckError with one line that says what is wrong.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .backend import get_array_module


class GradcheckError(ValueError):
    """A pair that cannot be checked as given; the message says what is wrong and how to fix it."""


class PrecisionError(GradcheckError):
    """A gradient computed in a lower precision than float64: not wrong, but too coarse to grade."""


@dataclass
class GradcheckRow:
    name: str
    shape: tuple
    rel_error: float
    analytic: float
    numeric: float


@dataclass
class GradcheckReport:
    """One row per checked array (``x`` and each parameter): the worst relative error found."""

    title: str
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)       # what the check noticed on the way (a dy changed in place)
    shown: bool = field(default=False, repr=False)  # printed already (by a grader): a notebook shows it once

    def __repr__(self):
        return f"<GradcheckReport {self.title!r}: {'PASS' if self.passed() else 'FAIL'}, worst {self.worst:.1e}>"

    def _ipython_display_(self):
        """What a notebook shows when a cell ends with a report: the table, unless a grader printed it."""
        if not self.shown:
            print(self)

    @property
    def worst(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def passed(self, tol=1e-6) -> bool:
        return self.worst < tol

    def assert_ok(self, tol=1e-6):
        if not self.passed(tol):
            raise AssertionError(f"gradient check failed (tolerance {tol:g}):\n{self}")

    def failing(self, tol=1e-6):
        return [r for r in self.rows if not r.rel_error < tol]

    def hint(self, tol=1e-6):
        """One line: which gradients are wrong, and by how much, or that all pass."""
        bad = self.failing(tol)
        if not bad:
            what = "the gradient matches" if len(self.rows) == 1 else f"all {len(self.rows)} gradients match"
            return f"{what} finite differences (worst relative error {self.worst:.1e})"
        worst = max(bad, key=lambda r: r.rel_error)
        ok = [r.name for r in self.rows if r not in bad]
        return (f"the gradient of {', '.join(r.name for r in bad)} {'is' if len(bad) == 1 else 'are'} wrong: along a "
                f"random direction, d{worst.name} gives {worst.analytic:.6g} where finite differences give "
                f"{worst.numeric:.6g} (relative error {worst.rel_error:.2g})"
                + (f"; {', '.join(ok)} pass" if ok else ""))

    def summary(self, tol=1e-6):
        notes = "".join(f"; note: {n}" for n in self.notes)
        return f"{'PASS' if self.passed(tol) else 'FAIL'}  {self.title}: {self.hint(tol)}{notes}"

    def __str__(self):
        w = max([len("array")] + [len(r.name) for r in self.rows])
        s = max([len("shape")] + [len(str(r.shape)) for r in self.rows])
        lines = [f"{self.title}", f"  {'array':<{w}}  {'shape':<{s}} {'rel error':>10} {'analytic':>13} {'numeric':>13}"]
        for r in self.rows:
            lines.append(f"  {r.name:<{w}}  {str(r.shape):<{s}} {r.rel_error:>10.2e} {r.analytic:>13.6e} "
                         f"{r.numeric:>13.6e}")
        return "\n".join(lines)


def check_gradients(f, inputs: dict, grads: dict, *, r=1.0, eps=1e-3, n_directions=3, atol=1e-9, seed=0,
                    title="function") -> GradcheckReport:
    """The check every other is made of. ``f()`` computes an output y from the float64 arrays ``inputs``, which
    are perturbed in place (and restored); ``grads`` holds, under the same names, the analytic gradient of
    L = sum(r * y), ``r`` a fixed projection (1 for a scalar loss). Each is compared with the finite
    differences of L along ``n_directions`` random unit directions; ``seed`` is an int or a Generator.

    The outputs are subtracted elementwise before the projection, so the large common part of y cancels
    exactly instead of costing digits in a big sum. Free functions (im2col, a loss) are checked with it
    directly; layers, models and forward/backward pairs through the wrappers below.
    """
    rng = np.random.default_rng(seed)                   # a Generator passes through unchanged
    report = GradcheckReport(title)
    for name in inputs:
        p, g = inputs[name], grads[name]
        xp = get_array_module(p)
        worst = None
        for _ in range(n_directions):
            u = xp.asarray(rng.standard_normal(p.shape))
            u /= xp.sqrt((u * u).sum())
            analytic = float((g * u).sum())
            original = p.copy()
            y = {}
            for step in (-2, -1, 1, 2):
                p[...] = original + (step * eps) * u
                y[step] = f()
            p[...] = original
            # fourth-order central difference: error O(eps^4) instead of O(eps^2)
            numeric = float((r * (8.0 * (y[1] - y[-1]) - (y[2] - y[-2]))).sum()) / (12.0 * eps)
            rel = abs(analytic - numeric) / max(abs(analytic), abs(numeric), atol)
            if worst is None or rel > worst.rel_error:
                worst = GradcheckRow(name, tuple(p.shape), rel, analytic, numeric)
        report.rows.append(worst)
    return report


def numerical_gradient(loss, x, eps=1e-3):
    """The full gradient of the scalar ``loss()`` with respect to the float64 array ``x``, element by element, by
    the fourth-order central difference (``x`` is perturbed in place and restored). For small arrays: it costs
    four evaluations of ``loss`` per element."""
    g = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        original = flat[i]
        f = {}
        for step in (-2, -1, 1, 2):
            flat[i] = original + step * eps
            f[step] = loss()
        flat[i] = original
        gflat[i] = (8.0 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12.0 * eps)
    return g


def describe_difference(got, want, axes=(), dy=None, constants=None, rtol=1e-6):
    """A phrase saying how the gradient ``got`` differs from the true one ``want`` (same shape): what it looks like
    where it matches a pattern (all zeros, the wrong sign, scaled by a constant, named where ``constants``
    holds it (name -> value, the name saying what the factor means), transposed, off by a constant per row, a residual's skip path ``dy`` missing or counted twice),
    then where it is wrong along the named ``axes`` (those named "" are not mentioned)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    size = max(float(np.abs(want).max()), 1e-300)

    def close(a, b):
        return bool(np.all(np.abs(a - b) <= rtol * 10 * size + 1e-12))
    looks = None
    if not got.any():
        looks = "is all zeros"
    elif dy is not None and close(got + dy, want):
        looks = ("leaves out the gradient that flows straight through a residual (the skip path): add dy to the "
                 "branch's gradient")
    elif dy is not None and close(got - dy, want):
        looks = "counts the skip path of a residual twice"
    else:
        c = float((got * want).sum() / max((want * want).sum(), 1e-300))
        if close(got, c * want) and abs(c - 1) > 1e-6:
            if abs(c + 1) < 1e-6:
                looks = "has the wrong sign"
            else:
                looks = f"is the right one times {c:.4g}"
                named = [name for name, v in (constants or {}).items() if abs(c - v) <= 1e-6 * abs(v)]
                if named:
                    looks += f" = {named[0]}"
        elif got.ndim >= 2 and got.shape[-1] == got.shape[-2] and close(got, want.swapaxes(-1, -2)):
            looks = "is the right one transposed (its last two axes swapped)"
        else:
            d = got - want
            if got.ndim >= 1 and got.shape[-1] > 1 and close(d, d.mean(axis=-1, keepdims=True)):
                looks = ("is off by a constant in each row (along its last axis): a term that is the same for every "
                         "element of a row is missing or wrong")
    bad = np.abs(got - want) > rtol * 10 * size
    where = []
    for axis, name in enumerate(axes):
        if not name or axis >= bad.ndim:
            continue
        hit = np.flatnonzero(bad.any(axis=tuple(a for a in range(bad.ndim) if a != axis)))
        if 0 < len(hit) < bad.shape[axis]:
            where.append(f"{name}{'s' if len(hit) > 1 else ''} {_ranges(hit)} of 0-{bad.shape[axis] - 1}")
    place = f"wrong only in {', '.join(where)}" if where else "wrong throughout"
    return f"{looks} ({place})" if looks else f"is {place}"


def _ranges(indices):
    """[0, 1, 2, 4] -> '0-2, 4'."""
    out, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


@dataclass
class IntermediateRow:
    name: str
    shape: tuple
    fd_diff: float              # max |ours - finite differences|
    fd_close: bool
    exact: Optional[bool] = None        # against autograd: bit for bit, close, max |diff| (None without it)
    close: Optional[bool] = None
    diff: Optional[float] = None


@dataclass
class IntermediateReport:
    """One row per intermediate of a forward: the hand-written gradient against finite differences and, where
    given, PyTorch's autograd (makemore's ``cmp``)."""
    title: str
    rows: list = field(default_factory=list)

    def passed(self) -> bool:
        return all(r.fd_close and r.close is not False for r in self.rows)

    def __str__(self):
        w = max([len("intermediate")] + [len(r.name) for r in self.rows])
        s = max([len("shape")] + [len(str(r.shape)) for r in self.rows])
        torch = any(r.exact is not None for r in self.rows)
        head = f"  {'intermediate':<{w}}  {'shape':<{s}}  finite differences: {'max diff':>9} close"
        if torch:
            head += f" | autograd: exact close {'max diff':>9}"
        lines = [self.title, head]
        for r in self.rows:
            line = f"  {r.name:<{w}}  {str(r.shape):<{s}}  {'':<20}{r.fd_diff:>9.1e} {str(r.fd_close):<5}"
            if r.exact is not None:
                line += f" | {'':<10}{str(r.exact):<5} {str(r.close):<5} {r.diff:>9.1e}"
            lines.append(line)
        return "\n".join(lines)

    def _ipython_display_(self):
        print(self)


def run_steps(steps, inputs, nudge=None):
    """The forward as a list of named steps: ``steps`` is [(name, f)], each ``f(env)`` computing one
    intermediate from the ones before it (``env``: name -> array, the inputs first). ``nudge``: (name, delta)
    added to that intermediate as soon as it is computed (for finite differences). Returns env."""
    env = dict(inputs)
    if nudge is not None and nudge[0] in env:
        env[nudge[0]] = env[nudge[0]] + nudge[1]
    for name, f in steps:
        env[name] = f(env)
        if nudge is not None and nudge[0] == name:
            env[name] = env[name] + nudge[1]
    return env


def check_intermediates(steps, inputs, grads, autograd=None, eps=1e-3, title="backward, line by line"):
    """Every hand-written gradient of a forward's intermediates, checked: ``steps`` and ``inputs`` as
    :func:`run_steps` (its last step is the scalar loss), ``grads``: name -> your gradient of the loss with
    respect to that intermediate (or input); ``autograd``: name -> PyTorch's ``.grad`` of the same intermediate
    (``retain_grad()``), or None. The finite differences move each intermediate alone, element by element,
    and run the rest of the forward from there (float64, small arrays)."""
    loss_name = steps[-1][0]
    base = run_steps(steps, inputs)
    report = IntermediateReport(title)
    for name, ours in grads.items():
        value = np.asarray(base[name], dtype=np.float64)
        numeric = np.zeros_like(value)
        flat = numeric.reshape(-1)
        for i in range(value.size):
            delta = np.zeros_like(value)
            f = {}
            for step in (-2, -1, 1, 2):
                delta.reshape(-1)[i] = step * eps
                f[step] = float(run_steps(steps, inputs, (name, delta))[loss_name])
            flat[i] = (8.0 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12.0 * eps)
        ours = np.asarray(ours, dtype=np.float64)
        size = max(float(np.abs(numeric).max()), 1e-12)
        fd = float(np.abs(ours - numeric).max()) if ours.shape == numeric.shape else float("inf")
        row = IntermediateRow(name, tuple(value.shape), fd, fd <= 1e-6 * size + 1e-12)
        if autograd is not None and name in autograd:
            theirs = np.asarray(autograd[name], dtype=np.float64)
            same_shape = theirs.shape == ours.shape
            row.exact = bool(same_shape and np.array_equal(ours, theirs))
            row.close = bool(same_shape and np.allclose(ours, theirs, rtol=1e-10, atol=1e-12))
            row.diff = float(np.abs(ours - theirs).max()) if same_shape else float("inf")
        report.rows.append(row)
    return report


def _prepared(layer, x, seed):
    """What every check of a layer or model starts from: a float64 deep copy of it (the caller's is not
    touched) with dropout off (a random mask would change between evaluations), the input as a float64 copy
    that may be perturbed, and the random stream of the projections and directions."""
    from .layers.dropout import Dropout

    layer = copy.deepcopy(layer)
    if any(p.dtype != np.float64 for p in layer.parameters().values()):
        layer.astype(np.float64)     # (a wrapper such as DataParallel is made around a float64 model instead)
    for _, sub in layer.named_layers():
        if isinstance(sub, Dropout):
            sub.training = False
    return layer, x.astype(np.float64), np.random.default_rng(seed)


def check_layer_gradients(layer, x, *, eps=1e-3, n_directions=3, atol=1e-9, seed=0, forward_kwargs=None,
                          title=None) -> GradcheckReport:
    """Check ``layer.backward`` against central differences of ``layer.forward``.

    Works on a float64 deep copy of ``layer`` (your layer is not touched) with
    dropout switched off. ``x`` is the input (cast to float64). Returns a
    report; ``report.assert_ok(1e-6)`` raises with the table when it fails.
    Any object with forward/backward and ``parameters()``/``gradients()``
    dicts (a :class:`npvit.layers.Layer`) can be checked.
    """
    layer, x, rng = _prepared(layer, x, seed)
    kw = forward_kwargs or {}
    xp = get_array_module(x)

    def out(v):
        y = layer.forward(v, **kw)
        return y[0] if isinstance(y, tuple) else y

    y = out(x)
    r = xp.asarray(rng.standard_normal(y.shape))  # the random projection: L = sum(r * y)
    layer.zero_grad()
    dy = r.copy()                                 # the backward's own copy: it may change it in place
    dx = layer.backward(dy)
    dx = checked_gradient(dx, "x", x.shape, "backward")
    arrays = {"x": x, **layer.parameters()}
    grads = {"x": dx, **{k: g.copy() for k, g in layer.gradients().items()}}
    report = check_gradients(lambda: out(x), arrays, grads, r=r, eps=eps, n_directions=n_directions, atol=atol,
                             seed=rng, title=title or type(layer).__name__)
    report.notes += changed_in_place({"dy": (dy, r)})
    return report


def check_model_gradients(model, x, labels, *, label_smoothing=0.0, eps=1e-3, n_directions=3, atol=1e-9,
                          seed=0) -> GradcheckReport:
    """Check a whole ViT: softmax cross-entropy of ``model(x)`` against ``labels``,
    for the input images (``x``) and every parameter, by name."""
    from .losses import softmax_cross_entropy

    model, x, rng = _prepared(model, x, seed)
    logits = model.forward(x)
    _, dlogits = softmax_cross_entropy(logits, labels, label_smoothing)
    model.zero_grad()
    dx = model.backward(dlogits)
    arrays = {"x": x, **model.parameters()}
    grads = {"x": dx, **{k: g.copy() for k, g in model.gradients().items()}}

    def loss():
        return softmax_cross_entropy(model.forward(x), labels, label_smoothing)[0]

    return check_gradients(loss, arrays, grads, eps=eps, n_directions=n_directions, atol=atol, seed=rng,
                           title="ViT (softmax cross-entropy)")


def check_pair(forward, backward, inputs: dict, *, eps=1e-3, n_directions=3, atol=1e-9, seed=0,
               title="forward/backward") -> GradcheckReport:
    """Check ``backward`` against central differences of ``forward``, the way a learner writes a layer:

        y, cache = forward(**inputs)            (a forward returning y alone is fine: cache is then None)
        grads = backward(dy, cache)             one gradient per input, in the order of ``inputs``

    ``inputs``: name -> float64 array; they are copied, never changed. L = sum(r * y) for a random r, and
    each gradient is compared with the finite differences of L along random directions. The common
    mistakes are a GradcheckError with one line saying what is wrong."""
    names = list(inputs)
    for name, a in inputs.items():
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise GradcheckError(f"input {name!r} is a {type(a).__name__}, not an array")
        if a.dtype != np.float64:
            raise GradcheckError(f"input {name!r} is {a.dtype}: a gradient check needs float64 (float32's 7 digits are "
                                 f"too few for finite differences); pass {name}.astype(np.float64)")
    arrays = {k: v.copy() for k, v in inputs.items()}
    kept = {k: v.copy() for k, v in inputs.items()}

    def run():
        out = forward(**arrays)
        return out if isinstance(out, tuple) and len(out) == 2 else (out, None)

    import inspect
    try:
        inspect.signature(forward).bind(**arrays)
    except TypeError as e:
        raise GradcheckError(f"forward is called as forward({', '.join(f'{k}=...' for k in names)}), one keyword per "
                             f"input: its parameters must have the inputs' names ({e})") from None
    except ValueError:           # a callable without a signature: call it and see
        pass
    y, cache = run()
    if not hasattr(y, "shape"):
        raise GradcheckError(f"forward must return its output array (or (output, cache)), got a {type(y).__name__}")
    changed = [k for k in names if not np.array_equal(arrays[k], kept[k])]
    if changed:
        raise GradcheckError(f"forward changed its input {changed[0]!r} in place: work on a copy")
    again = run()[0]
    if again.shape != y.shape or not np.array_equal(again, y):
        diff = float(np.max(np.abs(again - y))) if again.shape == y.shape else "a shape"
        raise GradcheckError(f"forward is not deterministic: two calls with the same inputs differ (by {diff}); "
                             f"a random draw inside it? fix its seed or switch dropout off")
    xp = get_array_module(y)
    rng = np.random.default_rng(seed)
    r = xp.asarray(rng.standard_normal(y.shape))
    dy, cache_given = r.copy(), copy.deepcopy(cache)      # the backward's own copies: it may change them in place
    grads = backward(dy, cache_given)
    if isinstance(grads, list) and len(names) == 1 and not (len(grads) == 1 and hasattr(grads[0], "shape")):
        raise GradcheckError(f"backward returned a list for the one input {names[0]!r}: return its gradient as an "
                             f"array (np.asarray(...) turns a nested list into one)")
    grads = grads if isinstance(grads, (tuple, list)) else (grads,)
    if len(grads) != len(names):
        raise GradcheckError(f"backward returned {len(grads)} gradient{'s' if len(grads) != 1 else ''} for the "
                             f"{len(names)} inputs ({', '.join(names)}): one per input, in that order")
    grads = {name: checked_gradient(g, name, inputs[name].shape, "backward") for name, g in zip(names, grads)}
    report = check_gradients(lambda: run()[0], arrays, grads, r=r, eps=eps, n_directions=n_directions, atol=atol,
                             seed=rng, title=title)
    report.notes += changed_in_place({"dy": (dy, r), "cache": (cache_given, cache)})
    return report


def checked_gradient(g, name, shape, who):
    """``g`` as the float64 array the check compares, or a GradcheckError with one line saying what is wrong
    with its form: missing, not an array, a list, complex, not numbers, lower precision, another shape."""
    if g is None:
        raise GradcheckError(f"{who} returned no gradient (None) for {name!r}: return d{name}, an array of "
                             f"shape {tuple(shape)}")
    if isinstance(g, (list, tuple)):
        raise GradcheckError(f"{who}'s gradient for {name!r} is a {type(g).__name__}, not an array: return one "
                             f"array per input (np.asarray(...) turns a nested list into one)")
    if not hasattr(g, "shape") or not hasattr(g, "dtype"):
        raise GradcheckError(f"{who}'s gradient for {name!r} is a {type(g).__name__}, not an array")
    kind = np.dtype(g.dtype).kind
    if kind == "c":
        raise GradcheckError(f"{who}'s gradient for {name!r} is complex ({g.dtype}): a gradient of a real loss is "
                             f"real; somewhere a complex number got in (np.sqrt of a negative? a complex constant?)")
    if kind not in "f":
        raise GradcheckError(f"{who}'s gradient for {name!r} holds {g.dtype}, not floating-point numbers")
    if tuple(g.shape) != tuple(shape):
        raise GradcheckError(f"{who}'s gradient for {name!r} has shape {tuple(g.shape)}, but {name!r} has shape "
                             f"{tuple(shape)}: a gradient has its variable's shape")
    if np.dtype(g.dtype).itemsize < 8:
        raise PrecisionError(f"your gradient for {name!r} is {g.dtype}: compute in float64 to grade it ("
                             f"{g.dtype}'s digits are too few to compare with finite differences; the inputs you "
                             f"were given are float64, so a {g.dtype} constant or astype() lowered it)")
    xp = get_array_module(g)
    return xp.asarray(g, dtype=np.float64)


def changed_in_place(handed):
    """Notes on the arrays a backward changed in place: ``handed`` maps a name to (the copy it was given, the
    original). Allowed (the grader handed copies), but worth knowing: a layer's caller may reuse them."""
    def same(a, b):
        if hasattr(a, "shape"):
            return a.shape == b.shape and bool((a == b).all())
        if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            return all(same(x, y) for x, y in zip(a, b))
        return True
    return [f"your backward changed {name} in place; that is fine here (it was given its own copy), but a caller "
            f"that reuses {name} would see the change" for name, (given, original) in handed.items()
            if not same(given, original)]
