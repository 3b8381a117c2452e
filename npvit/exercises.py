"""Exercises in backpropagation (notebooks/03_exercises.ipynb): write a backward pass, and have it graded at once
by the gradient check, in float64, against finite differences of npvit's reference forward.

    grade("layernorm", layernorm_backward)     layernorm_backward(dy, cache, w) -> (dx, dw, db),
                                               cache = LayerNormCache(xhat, rstd)
    grade("softmax", softmax_backward)         softmax_backward(datt, att) -> dscores
    grade("gelu", gelu_backward)               gelu_backward(dy, cache) -> dx, cache = GeluCache(x, gate, "tanh")
    grade("attention", attention_backward)     attention_backward(dctx, cache) -> dqkv,
                                               cache = AttentionCache(qkv, att, att_dropped, mask, scale, num_queries)
    grade("block", block_backward)             block_backward(block, dy) -> dx, from the block's sub-layers' backward

Each prints the check's table and one line: PASS, or FAIL with the array whose gradient is wrong. A backward
that still raises NotImplementedError is reported as not written yet. The forwards are the reference's
(npvit/ops/reference.py); docs/backprop.md derives each backward.
"""
from __future__ import annotations

import numpy as np

from .gradcheck import GradcheckError, PrecisionError, check_layer_gradients, check_pair
from .ops.reference import REFERENCE as R

B, N, D, H = 2, 5, 12, 3            # small odd sizes: a transposition bug shows
SIGNATURES = {
    "layernorm": "layernorm_backward(dy, cache, w) -> (dx, dw, db)",
    "softmax": "softmax_backward(datt, att) -> dscores",
    "gelu": "gelu_backward(dy, cache) -> dx",
    "attention": "attention_backward(dctx, cache) -> dqkv",
    "block": "block_backward(block, dy) -> dx",
}


def _check(name, fn, seed):
    rng = np.random.default_rng(seed)
    hs = D // H
    if name == "layernorm":
        x, w, b = 2 * rng.standard_normal((B, N, D)), 1 + 0.1 * rng.standard_normal(D), rng.standard_normal(D)
        return check_pair(lambda x, w, b: R.layernorm_forward(x, w, b), lambda dy, cache: fn(dy, cache, w.copy()),
                          {"x": x, "w": w, "b": b}, title="LayerNorm", seed=seed)
    if name == "softmax":
        def forward(scores):
            att = R.softmax_forward(scores)
            return att, att
        return check_pair(forward, fn, {"scores": 2 * rng.standard_normal((B, H, N, N))}, title="softmax", seed=seed)
    if name == "gelu":
        return check_pair(lambda x: R.gelu_forward(x, "tanh"), fn, {"x": 2 * rng.standard_normal((B, N, D))},
                          title="GELU (tanh)", seed=seed)
    if name == "attention":
        return check_pair(lambda qkv: R.attention_forward(qkv, hs ** -0.5), fn,
                          {"qkv": rng.standard_normal((3, B, H, N, hs))}, title="attention core", seed=seed)
    if name == "block":
        from .layers import Block

        class Graded(Block):
            def backward(self, dy):
                return fn(self, dy)

        block = Graded(D, H, 4 * D, rng=np.random.default_rng(seed), std=0.2)
        return check_layer_gradients(block, rng.standard_normal((B, N, D)), title="Block", seed=seed)
    raise ValueError(f"no exercise {name!r}; choose one of {list(SIGNATURES)}")


def grade(name, fn, seed=0, quiet=False):
    """Grade ``fn``, the learner's backward for exercise ``name``: print the table and one line (PASS, or FAIL with
    a hint), and return the report (None when the exercise is not written yet or cannot be checked as written:
    then the one line says why). A notebook cell ending in ``grade(...)`` shows the table and that line once."""
    say = (lambda *a: None) if quiet else print
    if name not in SIGNATURES:
        raise ValueError(f"no exercise {name!r}; choose one of {list(SIGNATURES)}")
    try:
        report = _check(name, fn, seed)
    except NotImplementedError:
        say(f"{name}: not written yet (the cell still raises NotImplementedError); write "
            f"{SIGNATURES[name]} and run it again")
        return None
    except PrecisionError as e:
        say(f"NOT GRADED  {name}: {e}")
        return None
    except GradcheckError as e:
        say(f"FAIL  {name}: {e}")
        return None
    except Exception as e:          # the learner's own code raised: one line naming it and where
        say(f"ERROR  {name}: your backward raised {type(e).__name__}: {e}{_where(e)}")
        return None
    say(report)
    say(report.summary())
    report.shown = not quiet
    return report


def _where(e):
    """`` (line N of FILE: `code`)`` for the innermost frame of ``e``'s traceback outside npvit, where any."""
    import os
    import traceback

    here = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not os.path.abspath(f.filename).startswith(here)]
    if not frames:
        return ""
    f = frames[-1]
    where = "your cell" if f.filename.startswith("<") or "ipykernel" in f.filename else os.path.basename(f.filename)
    code = f" `{f.line.split('  #')[0].strip()}`" if f.line else ""
    return f" (line {f.lineno} of {where}:{code})"
