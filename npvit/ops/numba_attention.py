"""The attention core fused for the numba kernel set: one compiled loop over the (image, head) pairs that
does scores, softmax, dropout and the context for each pair while its q, k, v and its rows of
probabilities sit in the core's L1/L2 cache; the backward likewise.

The composite (npvit/ops/composites.py) makes six batched products of 65x12 by 12x65-sized matrices per
layer through NumPy's matmul, one OpenBLAS call per matrix (about 4 us each for 0.1 MFLOP: a third of
the rate the model's Linear GEMMs reach), and passes three (B, H, N, N) arrays through memory between
them. Here each pair's products are three small loops specialised to the head size ``hs``, generated
below with the head-size loop written out (as llm.c writes its kernels for fixed sizes), so that LLVM
holds one accumulator per head column in a register and vectorises over the 65 tokens:

    nt(X, YT, out)      out[i, j]  = sum_c X[i, c] YT[c, j]   c < hs: two rows of scores, over j
    nn(X, YT, out)      out[i, c]  = sum_j X[i, j] YT[c, j]   hs dot products over the tokens at once
    tn(X, Y, outT)      outT[c, j] = sum_i X[i, c] Y[i, j]    rows of X (4 at a time) into hs rows over j

The keys and values are read transposed (kT, vT: hs rows of N tokens, copied per pair), so every inner
loop runs over a contiguous row of tokens. The math, the caches and the results are the composite's
(tests/ops/test_kernel_sets.py holds them equal in float64 and float32); only the order of the sums
differs. Compiled on first use for each head size and dtype (2-5 s each) and cached on disk.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np
from numba import njit

from .contract import AttentionCache

GROUP = 12        # at most this many accumulators at once in ``nn`` (16 vector registers on AVX2)
ROWS = 4          # rows of X per pass over a row of Y in ``tn``


@lru_cache(maxsize=None)
def name_tag(hs):
    """What the generated functions' names end with: the head size and a digest of the source they are made of.

    Numba's disk cache tells cached functions apart by name and bytecode, and checks only the file their code
    names (this one) for changes: the loops differ in ``hs`` alone, and they call numba_cpu's softmax loops,
    so both go into the name, and a change to either file compiles them anew."""
    digest = hashlib.sha256()
    for module in ("numba_attention.py", "numba_cpu.py"):
        with open(os.path.join(os.path.dirname(__file__), module), "rb") as f:
            digest.update(f.read())
    return f"hs{hs}_{digest.hexdigest()[:12]}"


def _each(template, indices, indent):
    """One line per index: ``template`` formatted with it (c, or r and c), each indented by ``indent`` spaces."""
    return "\n".join(" " * indent + template.format(*i) if isinstance(i, tuple) else " " * indent + template.format(i)
                     for i in indices)


def kernel_source(hs):
    """The Python source of the three products and the two loops for head size ``hs`` (what ``_attention`` compiles)."""
    tag = name_tag(hs)
    cols = range(hs)
    pairs = [(r, c) for r in range(ROWS) for c in cols]
    nn_groups = "".join(f"""
        # columns {g}..{min(g + GROUP, hs) - 1}: one accumulator each, summed over the tokens
{_each("a{0} = zero", range(g, min(g + GROUP, hs)), 8)}
        for j in range(N):
            x = X[i, j]
{_each("a{0} += x * YT[{0}, j]", range(g, min(g + GROUP, hs)), 12)}
{_each("out[i, {0}] = a{0}", range(g, min(g + GROUP, hs)), 8)}""" for g in range(0, hs, GROUP))
    nt_body = "\n".join(f"            y = YT[{c}, j]\n            a0 {'=' if c == 0 else '+='} x0_{c} * y\n"
                         f"            a1 {'=' if c == 0 else '+='} x1_{c} * y" for c in cols)
    return f"""
def nt_{tag}(X, YT, out):
    # out[i, j] = sum_c X[i, c] YT[c, j]: X (M, {hs}), YT ({hs}, N), out (M, N); two rows of X per pass over YT
    M, N = out.shape
    full = M - M % 2
    for i in range(0, full, 2):
{_each("x{0}_{1} = X[i + {0}, {1}]", [(r, c) for r in range(2) for c in cols], 8)}
        for j in range(N):
{nt_body}
            out[i, j] = a0
            out[i + 1, j] = a1
    for i in range(full, M):
{_each("x{0} = X[i, {0}]", cols, 8)}
        for j in range(N):
            out[i, j] = {" + ".join(f"x{c} * YT[{c}, j]" for c in cols)}


def nn_{tag}(X, YT, out):
    # out[i, c] = sum_j X[i, j] YT[c, j]: X (M, N), YT ({hs}, N), out (M, {hs})
    M, N = X.shape
    zero = X.dtype.type(0)
    for i in range(M):{nn_groups}


def tn_{tag}(X, Y, outT):
    # outT[c, j] = sum_i X[i, c] Y[i, j]: X (M, {hs}), Y (M, N), outT ({hs}, N); {ROWS} rows of X per pass over j
    M, N = Y.shape
    outT[:, :] = 0
    full = M - M % {ROWS}
    for i in range(0, full, {ROWS}):
{_each("x{0}_{1} = X[i + {0}, {1}]", pairs, 8)}
        for j in range(N):
{_each("y{0} = Y[i + {0}, j]", range(ROWS), 12)}
{chr(10).join(" " * 12 + f"outT[{c}, j] += " + " + ".join(f"x{r}_{c} * y{r}" for r in range(ROWS)) for c in cols)}
    for i in range(full, M):
{_each("x{0} = X[i, {0}]", cols, 8)}
        for j in range(N):
            y = Y[i, j]
{_each("outT[{0}, j] += x{0} * y", cols, 12)}
""" + DRIVERS.format(hs=hs, tag=tag)


# The loops over the (image, head) pairs, written once; kernel_source fills in the head size.
DRIVERS = """
def forward_{tag}(qkv, Nq, scale, mask, dropped, att, att_d, ctx):
    # qkv (3, P, N, hs) -> att, att_d (P, Nq, N) and ctx (P, Nq, hs); P = B H pairs; mask (P, Nq, N) if dropped
    P, N = qkv.shape[1], qkv.shape[2]
    zero, one = qkv.dtype.type(0), qkv.dtype.type(1)
    kT, vT = np.empty(({hs}, N), qkv.dtype), np.empty(({hs}, N), qkv.dtype)
    for p in range(P):
        q, k, v = qkv[0, p], qkv[1, p], qkv[2, p]               # (N, hs) each
        transpose_into(k, kT)                                   # (hs, N)
        transpose_into(v, vT)
        s = att[p]                                              # (Nq, N)
        nt_{tag}(q[:Nq], kT, s)                                # scores = q k^T
        softmax_forward_inplace(s, scale, zero, one)            # att = softmax(scale * scores)
        ad = s
        if dropped:
            ad = att_d[p]
            multiply_into(s, mask[p], ad)                       # att_d = att * mask
        nn_{tag}(ad, vT, ctx[p])                               # ctx = att_d v


def backward_{tag}(qkv, Nq, scale, att, att_d, mask, dropped, dctx, dqkv):
    # dctx (P, Nq, hs) -> dqkv (3, P, N, hs):
    #   datt_d = dctx v^T,  datt = datt_d * mask,  dscores = scale att (datt - sum(datt att)),
    #   dq = dscores k,  dk = dscores^T q,  dv = att_d^T dctx
    P, N = qkv.shape[1], qkv.shape[2]
    zero = qkv.dtype.type(0)
    kT, vT = np.empty(({hs}, N), qkv.dtype), np.empty(({hs}, N), qkv.dtype)
    dkT, dvT = np.empty(({hs}, N), qkv.dtype), np.empty(({hs}, N), qkv.dtype)
    ds = np.empty((Nq, N), qkv.dtype)                           # one pair's datt, then its dscores
    for p in range(P):
        q, k, v = qkv[0, p], qkv[1, p], qkv[2, p]               # (N, hs) each
        transpose_into(k, kT)                                   # (hs, N)
        transpose_into(v, vT)
        a, g = att[p], dctx[p]                                  # (Nq, N), (Nq, hs)
        ad = a
        nt_{tag}(g, vT, ds)                                    # datt_d = dctx v^T
        if dropped:
            ad = att_d[p]
            multiply_inplace(ds, mask[p])                       # datt = datt_d * mask
        softmax_backward_inplace(ds, a, scale, zero)            # dscores
        dq = dqkv[0, p]
        nn_{tag}(ds, kT, dq[:Nq])                              # dq = dscores k
        dq[Nq:, :] = zero                                       # tokens that asked nothing
        tn_{tag}(q[:Nq], ds, dkT)                              # dk^T = q^T dscores
        transpose_into(dkT, dqkv[1, p])
        tn_{tag}(g, ad, dvT)                                   # dv^T = dctx^T att_d
        transpose_into(dvT, dqkv[2, p])
"""


@lru_cache(maxsize=None)
def _attention(hs):
    """The forward and backward loops for head size ``hs``, compiled on first use for each dtype and cached on disk
    (the source's file name is this module's, so a change here recompiles them)."""
    from . import numba_cpu                       # (numba_cpu imports this module: its table holds the loops here)
    namespace = {"__name__": __name__, "np": np, "transpose_into": numba_cpu._transpose_into,
                 "multiply_into": numba_cpu._multiply_into, "multiply_inplace": numba_cpu._multiply_inplace,
                 "softmax_forward_inplace": numba_cpu._softmax_forward_inplace,
                 "softmax_backward_inplace": numba_cpu._softmax_backward_inplace}
    tag = name_tag(hs)
    exec(compile(kernel_source(hs), __file__, "exec"), namespace)
    for name in ("nt", "nn", "tn", "forward", "backward"):      # the products first: the loops call them
        namespace[f"{name}_{tag}"] = njit(**numba_cpu.JIT)(namespace[f"{name}_{tag}"])
    return namespace[f"forward_{tag}"], namespace[f"backward_{tag}"]


def fused_attention_forward(qkv, scale, num_queries=None, mask=None):
    """The composite's attention_forward (npvit/ops/composites.py), fused: qkv (3, B, H, N, hs) -> ctx
    (B, H, Nq, hs) and the same AttentionCache."""
    _, B, H, N, hs = qkv.shape
    Nq = N if num_queries is None else num_queries
    qkv = np.ascontiguousarray(qkv)
    T = qkv.dtype.type
    att = np.empty((B, H, Nq, N), qkv.dtype)
    ctx = np.empty((B, H, Nq, hs), qkv.dtype)
    dropped = mask is not None
    mask = np.ascontiguousarray(mask, dtype=qkv.dtype) if dropped else np.empty((B, H, 0, 0), qkv.dtype)
    att_d = np.empty_like(att) if dropped else att
    forward, _ = _attention(hs)
    forward(qkv.reshape(3, B * H, N, hs), Nq, T(scale), mask.reshape(B * H, *mask.shape[2:]), dropped,
            att.reshape(B * H, Nq, N), att_d.reshape(B * H, Nq, N), ctx.reshape(B * H, Nq, hs))
    return ctx, AttentionCache(qkv, att, att_d, mask if dropped else None, scale, Nq)


def fused_attention_backward(dctx, cache):
    """The composite's attention_backward, fused: dctx (B, H, Nq, hs) -> dqkv (3, B, H, N, hs)."""
    qkv, att, att_d, mask, scale, Nq = cache
    _, B, H, N, hs = qkv.shape
    T = qkv.dtype.type
    dropped = mask is not None
    dctx = np.ascontiguousarray(dctx, dtype=qkv.dtype)
    dqkv = np.empty_like(qkv)
    mask = mask if dropped else np.empty((B, H, 0, 0), qkv.dtype)
    _, backward = _attention(hs)
    backward(qkv.reshape(3, B * H, N, hs), Nq, T(scale), att.reshape(B * H, Nq, N), att_d.reshape(B * H, Nq, N),
             mask.reshape(B * H, *mask.shape[2:]), dropped, dctx.reshape(B * H, Nq, hs), dqkv.reshape(3, B * H, N, hs))
    return dqkv
