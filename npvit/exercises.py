"""Exercises in backpropagation (notebooks/03_exercises.ipynb): write a backward pass, have it graded at once, and
finally train the ViT on the backward passes you wrote (:func:`kernel_set`).

Each exercise gives a forward (npvit's reference, npvit/ops/reference.py) and asks for its backward, from the
easiest to the hardest:

    grade("linear", linear_backward)         linear_backward(dy, cache, w) -> (dx, dw, db)
    grade("cross_entropy", ce_backward)      cross_entropy_backward(cache) -> dlogits
    grade("gelu", gelu_backward)             gelu_backward(dy, cache) -> dx
    grade("softmax", softmax_backward)       softmax_backward(datt, att) -> dscores
    grade("layernorm", layernorm_backward)   layernorm_backward(dy, cache, w) -> (dx, dw, db)
    grade("embeddings", embeddings_backward) embeddings_backward(dtokens) -> (dpatches, dcls, dpos)
    grade("col2im", col2im)                  col2im(dcols, x_shape, stride, padding) -> dx
    grade("attention", attention_backward)   attention_backward(dctx, cache) -> dqkv
    grade("block", block_backward)           block_backward(block, dy) -> dx

``grade`` checks the gradients against finite differences of the forward, in float64, on small odd shapes and
on every case the forward has (a dropout mask, a [CLS]-only query, overlapping windows), prints one table and
one line: PASS, or FAIL naming the array that is wrong (dq, dk and dv apart), where in it (which tokens,
heads, rows) and what the error looks like when it looks like something (a constant per row, a transpose, a
missing 1/sqrt(hs), a residual's skip path left out, a mistake the exercise knows). A gradient in float32, one
of the wrong form, or an exception in your code is one line saying so. ``example(name)`` hands you the
arguments of the first case to try your function on.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .gradcheck import (GradcheckError, PrecisionError, check_pair, checked_gradient, describe_difference,
                        numerical_gradient)
from .ops import cases as catalogue
from .ops.reference import REFERENCE as R

B, N, D, H, K = 2, 5, 12, 3, 7          # small odd sizes: a transposition bug shows
TOL = 1e-6                              # relative error above which a gradient is wrong
RIGHT = "right answers give about 1e-10 here, wrong ones 1e-3 or more"


@dataclass
class Case:
    """One situation the forward can be in: its inputs, and how the learner's function is called on it."""
    title: str
    forward: Callable                   # forward(**inputs) -> (y, cache)
    inputs: dict                        # name -> float64 array; one gradient is graded per input
    call: Callable                      # call(fn, dy, cache) -> one gradient per input, in that order
    axes: dict = field(default_factory=dict)    # input name -> the names of its axes, to say where it is wrong
    constants: dict = field(default_factory=dict)   # constants a wrong answer may be off by, by name
    args: Callable = None               # args(dy, cache) -> what the learner's function is called with


@dataclass
class Exercise:
    name: str
    signature: str
    minutes: int
    cases: Callable                     # cases(rng) -> [Case]
    mistakes: tuple = ()                # (what the mistake is, wrong function with the learner's signature)


def _catalogue(name, rng, dims=(B, N, D, H)):
    """Case ``name`` of the contract's catalogue (npvit/ops/cases.py), drawn in float64 from ``rng`` at ``dims``:
    (its graded inputs, the reference forward as a function of them alone, its other inputs). The exercises
    grade the same forward/backward pairs that ``npvit gradcheck`` and the kernel sets' tests walk."""
    case = catalogue.BY_NAME[name]
    drawn = case.inputs(lambda *shape, scale=1.0: scale * rng.standard_normal(shape), dims)
    fixed = {k: v for k, v in drawn.items() if k not in case.graded}

    def forward(**graded):
        return case.forward(R, **graded, **fixed)
    return {k: drawn[k] for k in case.graded}, forward, fixed


def _cases_linear(rng):
    inputs, forward, _ = _catalogue("linear", rng)
    w = inputs["w"]

    def call(fn, dy, cache):
        return fn(dy, cache, w.copy())
    return [Case("x (B, N, D) -> y (B, N, K)", forward, inputs, call,
                 {"x": ("image", "token", "feature"), "w": ("output", "input"), "b": ("output",)},
                 {"B*N, the number of rows: a sum where a mean belongs?": B * N,
                  "1/(B*N), 1 / the number of rows: a mean where a sum belongs?": 1 / (B * N)},
                 lambda dy, cache: (dy, cache, w.copy()))]


def _cases_cross_entropy(rng):
    rows = B + 3
    inputs, forward, _ = _catalogue("cross_entropy_labels", rng, (rows, N, D, H))     # smoothing 0.1
    return [Case("label smoothing 0.1", forward, inputs, lambda fn, dy, cache: (dy * fn(cache),),
                 {"logits": ("image", "class")},
                 {"B: the loss is the batch's mean, so divide by B": rows, "1/B: divided by B twice?": 1 / rows},
                 lambda dy, cache: (cache,))]


def _cases_gelu(rng):
    inputs, forward, _ = _catalogue("gelu_tanh", rng)
    return [Case("tanh form", forward, inputs, lambda fn, dy, cache: fn(dy, cache),
                 {"x": ("image", "token", "feature")}, args=lambda dy, cache: (dy, cache))]


def _cases_softmax(rng):
    inputs, forward, _ = _catalogue("softmax", rng)
    return [Case("rows of (B, H, N, N)", forward, inputs, lambda fn, dy, att: fn(dy, att),
                 {"scores": ("image", "head", "row", "column")}, args=lambda dy, att: (dy, att))]


def _cases_layernorm(rng):
    inputs, forward, _ = _catalogue("layernorm", rng)
    w = inputs["w"]
    return [Case("x (B, N, D)", forward, inputs, lambda fn, dy, cache: fn(dy, cache, w.copy()),
                 {"x": ("image", "token", "feature"), "w": ("feature",), "b": ("feature",)},
                 {"D, the width": D, "1/D, 1 / the width": 1 / D}, lambda dy, cache: (dy, cache, w.copy()))]


def embeddings_forward(patches, cls, pos):
    """tokens = concat([CLS], patches) + positions: patches (B, Np, D), cls (1, 1, D), pos (1, N, D)."""
    tokens = np.concatenate([np.broadcast_to(cls, (patches.shape[0], 1, patches.shape[2])), patches], axis=1)
    return tokens + pos, None                                    # (B, N, D)


def _cases_embeddings(rng):
    inputs = {"patches": rng.standard_normal((B, N - 1, D)), "cls": rng.standard_normal((1, 1, D)),
              "pos": rng.standard_normal((1, N, D))}
    return [Case("B images, N - 1 patches", embeddings_forward, inputs, lambda fn, dy, cache: fn(dy),
                 {"patches": ("image", "patch", "feature"), "cls": ("", "", "feature"),
                  "pos": ("", "token", "feature")}, {"B, the number of images": B}, lambda dy, cache: (dy,))]


def _cases_col2im(rng):
    cases = []
    for name, title, stride, pad in (("im2col_patches", "patches: kernel 4 = stride 4, no padding", 4, 0),
                                     ("im2col", "overlapping windows: kernel 3, stride 2, padding 1", 2, 1)):
        inputs, forward, _ = _catalogue(name, rng)
        shape = inputs["x"].shape

        def call(fn, dcols, cache, shape=shape, stride=stride, pad=pad):
            return (fn(dcols, shape, stride, pad),)
        cases.append(Case(title, forward, inputs, call, {"x": ("image", "channel", "row", "column")},
                          args=lambda dcols, cache, shape=shape, stride=stride, pad=pad: (dcols, shape, stride, pad)))
    return cases


def _cases_attention(rng):
    hs = 3                              # sqrt(hs) = 1.73: a missing scale is told apart from a factor of 2
    scale = hs ** -0.5
    cases = []
    for name, title in (("attention", "no dropout, every token asks"),
                        ("attention_dropout", "dropout mask (p = 0.3)"),
                        ("attention_cls", "only [CLS] asks (num_queries = 1)")):
        graded, on_qkv, _ = _catalogue(name, rng, (B, N, H * hs, H))
        q, k, v = graded["qkv"]                                  # (B, H, N, hs) each: graded apart

        def forward(q, k, v, on_qkv=on_qkv):
            return on_qkv(qkv=np.stack([q, k, v]))

        def call(fn, dctx, cache):
            dqkv = checked_gradient(fn(dctx, cache), "qkv", cache.qkv.shape, "attention_backward")
            return dqkv[0], dqkv[1], dqkv[2]
        cases.append(Case(title, forward, {"q": q.copy(), "k": k.copy(), "v": v.copy()}, call,
                          {n: ("image", "head", "token", "feature") for n in "qkv"},
                          {"sqrt(hs) = 1/scale: the scale 1/sqrt(hs) is missing": 1 / scale,
                           "the scale 1/sqrt(hs): applied once too often": scale}, lambda dctx, cache: (dctx, cache)))
    return cases


def _cases_block(rng):
    from .layers import Block

    block = Block(D, H, 4 * D, rng=np.random.default_rng(int(rng.integers(1 << 30))), std=0.2).astype(np.float64)
    x = rng.standard_normal((B, N, D))

    def forward(x):
        return block.forward(x), None

    def call(fn, dy, cache):
        block.forward(inputs["x"])                                # the layers' caches: of this very input
        return (fn(block, dy),)
    inputs = {"x": x}
    return [Case("x (B, N, D)", forward, inputs, call, {"x": ("image", "token", "feature")},
                 args=lambda dy, cache: (block, dy))]


# -- the mistakes each exercise recognises by name ----------------------------------------------------------------
def _no_smoothing(cache):
    logp, q = cache
    onehot = (q == q.max(axis=1, keepdims=True)).astype(q.dtype)
    return (np.exp(logp) - onehot) / len(q)


def _gate_only(dy, cache):
    return dy * cache.gate


def _no_row_sum(datt, att):
    return att * datt


def _constant_stats(dy, cache, w):
    xhat, rstd = cache
    return dy * w * rstd, (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0), dy.reshape(-1, dy.shape[-1]).sum(0)


def _overwrite_windows(dcols, x_shape, stride, padding):
    Bx, C, Hx, Wx = x_shape
    kh, kw = dcols.shape[4:]
    OH, OW = dcols.shape[1:3]
    dx = np.zeros((Bx, C, Hx + 2 * padding, Wx + 2 * padding))
    for i in range(kh):
        for j in range(kw):
            dx[:, :, i:i + stride * OH:stride, j:j + stride * OW:stride] = dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dx[:, :, padding:padding + Hx, padding:padding + Wx]


def _ignore_mask(dctx, cache):
    return R.attention_backward(dctx, cache._replace(mask=None, att_dropped=cache.att))


def _mask_on_dv_only(dctx, cache):
    return R.attention_backward(dctx, cache._replace(mask=None))


def _wrong_tokens(dtokens):
    return dtokens[:, :-1], dtokens[:, :1].sum(axis=0, keepdims=True), dtokens.sum(axis=0, keepdims=True)


def _no_skips(block, dy):
    return block.layernorm_1.backward(block.attention.backward(block.layernorm_2.backward(block.mlp.backward(dy))))


def _no_skip_2(block, dy):
    dx1 = block.layernorm_2.backward(block.mlp.backward(dy))
    return dx1 + block.layernorm_1.backward(block.attention.backward(dx1))


def _no_skip_1(block, dy):
    dx1 = dy + block.layernorm_2.backward(block.mlp.backward(dy))
    return block.layernorm_1.backward(block.attention.backward(dx1))


EXERCISES = {e.name: e for e in (
    Exercise("linear", "linear_backward(dy, cache, w) -> (dx, dw, db), cache = LinearCache(x2d, has_bias)", 5,
             _cases_linear),
    Exercise("cross_entropy", "cross_entropy_backward(cache) -> dlogits, cache = CrossEntropyCache(logp, q)", 5,
             _cases_cross_entropy,
             (("it ignores the label smoothing: the target is q (0.9 on the label and 0.1/K spread over every "
               "class), not the one-hot label", _no_smoothing),)),
    Exercise("gelu", "gelu_backward(dy, cache) -> dx, cache = GeluCache(x, gate, 'tanh')", 10, _cases_gelu,
             (("it has the gate's part only: y = x * gate has two factors, so add x * dgate/dx (product rule)",
               _gate_only),)),
    Exercise("softmax", "softmax_backward(datt, att) -> dscores", 10, _cases_softmax,
             (("it misses the - sum(datt * att) term: every output of a row depends on every input of the row "
               "(they sum to 1)", _no_row_sum),)),
    Exercise("layernorm", "layernorm_backward(dy, cache, w) -> (dx, dw, db), cache = LayerNormCache(xhat, rstd)", 20,
             _cases_layernorm,
             (("it treats the mean and rstd as constants: they depend on x too, which adds two terms to dx",
               _constant_stats),)),
    Exercise("embeddings", "embeddings_backward(dtokens) -> (dpatches, dcls, dpos)", 10, _cases_embeddings,
             (("it takes the wrong tokens for the patches: token 0 is [CLS], the patches are tokens 1 to N - 1",
               _wrong_tokens),)),
    Exercise("col2im", "col2im(dcols, x_shape, stride, padding) -> dx, the backward of im2col", 25, _cases_col2im,
             (("where windows overlap it keeps one window's gradient: a pixel in several windows gets the sum of "
               "their gradients (+=, not =)", _overwrite_windows),)),
    Exercise("attention", "attention_backward(dctx, cache) -> dqkv, cache = AttentionCache(qkv, att, att_dropped, "
             "mask, scale, num_queries)", 30, _cases_attention,
             (("it ignores the dropout mask: ctx = att_dropped v, so dv = att_dropped^T dctx and datt = (dctx v^T) * "
               "mask before the softmax's backward", _ignore_mask),
              ("it applies the dropout mask to dv only: datt = (dctx v^T) * mask too, before the softmax's backward",
               _mask_on_dv_only))),
    Exercise("block", "block_backward(block, dy) -> dx, from the block's sub-layers' backward", 15, _cases_block,
             (("it leaves out the skip paths of both residuals: each residual adds the gradient that flows "
               "straight through (dx1 = dy + ..., dx = dx1 + ...)", _no_skips),
              ("it leaves out the skip path of the second residual: dx1 = dy + (the MLP branch's gradient)",
               _no_skip_2),
              ("it leaves out the skip path of the first residual: dx = dx1 + (the attention branch's gradient)",
               _no_skip_1))),
)}
SIGNATURES = {name: e.signature for name, e in EXERCISES.items()}


def exercise(name):
    if name not in EXERCISES:
        raise ValueError(f"no exercise {name!r}; choose one of {list(EXERCISES)}")
    return EXERCISES[name]


def example(name, seed=0):
    """The arguments the grader calls your ``name`` backward with in its first case, to try it on: e.g.
    ``dy, cache, w = example("layernorm")``; then ``layernorm_backward(dy, cache, w)``."""
    case = exercise(name).cases(np.random.default_rng(seed))[0]
    y, cache = case.forward(**{k: v.copy() for k, v in case.inputs.items()})
    dy = np.random.default_rng(seed).standard_normal(np.shape(y))
    return case.args(dy, cache)


# -- grading ------------------------------------------------------------------------------------------------------
def _check(name, fn, seed):
    """Check every case: (the merged report, the first failing case or None)."""
    cases = exercise(name).cases(np.random.default_rng(seed))
    report, failing = None, None
    for case in cases:
        r = check_pair(case.forward, lambda dy, cache, case=case: case.call(fn, dy, cache), case.inputs,
                       title=name, seed=seed)
        if len(cases) > 1:
            for row in r.rows:
                row.name = f"{row.name} [{case.title}]"
        if report is None:
            report = r
        else:
            report.rows += r.rows
            report.notes += [n for n in r.notes if n not in report.notes]
        if failing is None and not r.passed(TOL):
            failing = (case, r)
    return report, failing


def _diagnose(name, fn, case, seed):
    """The hint of a failing case: which arrays are wrong, where, and what the error looks like."""
    ex = exercise(name)
    inputs = {k: v.copy() for k, v in case.inputs.items()}
    y, cache = case.forward(**inputs)
    r = np.random.default_rng(seed).standard_normal(np.shape(y))     # check_pair's projection: L = sum(r * y)
    import copy
    got = dict(zip(case.inputs, _as_tuple(case.call(fn, r.copy(), copy.deepcopy(cache)))))
    want = {k: numerical_gradient(lambda: float((r * case.forward(**inputs)[0]).sum()), inputs[k])
            for k in case.inputs}
    wrong = [k for k in case.inputs if not np.allclose(got[k], want[k], rtol=1e-5,
                                                       atol=1e-6 * max(1e-12, float(np.abs(want[k]).max())))]
    if not wrong:
        wrong = list(case.inputs)
    for text, mistake in ex.mistakes:
        made = _as_tuple(case.call(mistake, r.copy(), copy.deepcopy(cache)))
        if all(np.allclose(got[k], m, rtol=1e-7, atol=1e-10) for k, m in zip(case.inputs, made)):
            return f"{_names(wrong)} {'is' if len(wrong) == 1 else 'are'} wrong: {text}"
    details = []
    for k in wrong:
        dy = r if np.shape(r) == np.shape(want[k]) else None
        details.append(f"d{k} " + describe_difference(got[k], want[k], case.axes.get(k, ()), dy, case.constants))
    return "; ".join(details)


def _as_tuple(grads):
    return tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)


def _names(keys):
    return ", ".join(f"d{k}" for k in keys)


def grade(name, fn, seed=0, quiet=False):
    """Grade ``fn``, the learner's backward for exercise ``name``: print the table and one line (PASS, or FAIL with
    a hint), and return the report (None when the exercise is not written yet or cannot be checked as written:
    then the one line says why). A notebook cell ending in ``grade(...)`` shows the table and that line once."""
    say = (lambda *a: None) if quiet else print
    ex = exercise(name)
    try:
        report, failing = _check(name, fn, seed)
        hint = None if failing is None else _diagnose(name, fn, failing[0], seed)
    except NotImplementedError:
        say(f"{name}: not written yet (the cell still raises NotImplementedError); write {ex.signature} and run it "
            f"again")
        return None
    except PrecisionError as e:
        say(f"NOT GRADED  {name}: {e}")
        return None
    except GradcheckError as e:
        say(f"FAIL  {name}: {e}")
        return None
    except Exception as e:          # the learner's own code raised: one line naming it and where
        say(f"ERROR  {name}: your code raised {type(e).__name__}: {e}{_where(e)}")
        return None
    say(report)
    notes = "".join(f"; note: {n}" for n in report.notes)
    if failing is None:
        say(f"PASS  {name}: {report.hint(TOL)} ({RIGHT}){notes}")
    else:
        case, r = failing
        worst = max(r.failing(TOL), key=lambda row: row.rel_error)
        where = f" in the case '{case.title}'" if len(ex.cases(np.random.default_rng(seed))) > 1 else ""
        say(f"FAIL  {name}{where}: {hint} (relative error {worst.rel_error:.1e}; {RIGHT}){notes}")
    report.shown = not quiet
    return report


def _where(e):
    """`` (line N of FILE: `code`)`` for the innermost frame of ``e``'s traceback outside npvit, where any."""
    here = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not os.path.abspath(f.filename).startswith(here)]
    if not frames:
        return ""
    f = frames[-1]
    where = "your cell" if f.filename.startswith("<") or "ipykernel" in f.filename else os.path.basename(f.filename)
    code = f" `{f.line.split('  #')[0].strip()}`" if f.line else ""
    return f" (line {f.lineno} of {where}:{code})"


# -- the capstone: a kernel set of your own -------------------------------------------------------------------------
def kernel_set(name="mine", *, linear_backward=None, cross_entropy_backward=None, gelu_backward=None,
               softmax_backward=None, layernorm_backward=None, col2im=None, attention_backward=None):
    """The backward passes you wrote as a kernel set of their own (npvit/ops/contract.py): every function you pass
    replaces the reference's, the rest are taken from it. ``ViT(config, kernels=kernel_set(...))`` then trains on
    your backward. Your functions keep the exercises' signatures; this wraps each into the contract's."""
    from .ops.kernelset import KernelSet, taken
    from .ops.contract import PRIMITIVE_NAMES

    mine, fused = {}, {}
    if gelu_backward is not None:
        def gelu_backward_(dy, cache):
            return gelu_backward(dy, cache)
        mine["gelu_backward"] = gelu_backward_
    if softmax_backward is not None:
        def softmax_backward_(datt, att, scale=1.0, out=None):
            dscores = scale * softmax_backward(datt, att)              # d/ds of softmax(scale * s)
            if out is not None:
                out[...] = dscores
                return out
            return dscores
        mine["softmax_backward"] = softmax_backward_
    if layernorm_backward is not None:
        def layernorm_backward_(dy, cache, w):
            return layernorm_backward(dy, cache, w)
        mine["layernorm_backward"] = layernorm_backward_
    if cross_entropy_backward is not None:
        def cross_entropy_backward_(cache):
            return cross_entropy_backward(cache)
        mine["cross_entropy_backward"] = cross_entropy_backward_
    if col2im is not None:
        def col2im_(cols, x_shape, stride=1, padding=0):
            return col2im(cols, x_shape, stride, padding)
        mine["col2im"] = col2im_
    if linear_backward is not None:
        def linear_backward_(dy, cache, w):
            return linear_backward(dy, cache, w)
        fused["linear_backward"] = linear_backward_
    if attention_backward is not None:
        def attention_backward_(dctx, cache):
            return attention_backward(dctx, cache)
        fused["attention_backward"] = attention_backward_
    given = {"gelu_backward": gelu_backward, "softmax_backward": softmax_backward,
             "layernorm_backward": layernorm_backward, "cross_entropy_backward": cross_entropy_backward,
             "col2im": col2im, "linear_backward": linear_backward, "attention_backward": attention_backward}
    for table in (mine, fused):                  # each wrapper says whose function it runs (KernelSet.origin)
        for key, wrapper in table.items():
            wrapper.__module__ = getattr(given[key], "__module__", wrapper.__module__)
    rest = [n for n in PRIMITIVE_NAMES if n not in mine]
    return KernelSet(name, backends=("numpy",), primitives={**mine, **taken(R, *rest)}, fused=fused)


def train_steps(kernels, images, labels, steps=200, batch_size=32, lr=1e-3, seed=0, config=None):
    """The capstone's short training run: ``steps`` AdamW steps of the article's model (float64) on ``images``
    (uint8, (n, 3, 32, 32)) and ``labels``, with kernel set ``kernels``; the loss of every step. The same
    batches and initial weights for any kernel set, so two sets' losses can be compared step by step."""
    from .config import ViTConfig
    from .model import ViT
    from .optim import AdamW
    from .losses import softmax_cross_entropy

    config = config or ViTConfig()
    model = ViT(config, dtype="float64", seed=seed, kernels=kernels)
    opt = AdamW(model, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    x_all = (images.astype(np.float64) / 255.0 - 0.5) / 0.5
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(labels), size=min(batch_size, len(labels)), replace=False)
        model.zero_grad()
        loss, dlogits = softmax_cross_entropy(model.forward(x_all[idx]), labels[idx], kernels=model.kernels)
        model.backward(dlogits)
        opt.step()
        losses.append(float(loss))
    return losses
