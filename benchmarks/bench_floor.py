#!/usr/bin/env python
"""How far a CPU training step is from its GEMM floor.

The floor is the time the step's matrix products alone would take at the rate one core reaches
on the model's Linear GEMMs, with every core busy: (GEMM FLOPs of forward + backward) /
(threads x that rate). Each GEMM of one shard (batch / threads images, as npvit.DataParallel
runs it, BLAS on one thread) is timed on its own; then the whole npvit training step (forward,
loss, backward, AdamW) is timed in a fresh process, and the ratio step / floor says how much of
the step is anything but Linear-rate GEMMs (the attention's small batched products, the
elementwise kernels, the optimiser).

    python benchmarks/bench_floor.py                       # the article model, batch 256, 2 threads
    python benchmarks/bench_floor.py --patch-dropout 0.25  # the fast80 recipe's shorter token sequences
    python benchmarks/bench_floor.py --patch-dropout 0.25 --patch-overlap 2   # swift80's step

Prints a table; writes it with the machine's details to JSON (default benchmarks/results/floor.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_train_step as bench  # noqa: E402  (sets BLAS threads through the environment before numpy loads)


def gemms(cfg, images, tokens):
    """The matrix products of one training step on ``images`` images of ``tokens`` tokens, each with its
    kind ("linear" or "attention"), role, how many of it a step makes, and its (m, k, n)."""
    D, F, H, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    P, C, o = cfg["patch_size"], cfg["num_channels"], cfg.get("patch_overlap", 0)
    patches, rows, N, dh = (cfg["image_size"] // P) ** 2, images * tokens, tokens, D // H
    out = []
    # Y = X W (m, k) @ (k, n): backward dX = dY W^T (m, n) @ (n, k) and dW = X^T dY (k, m) @ (m, n).
    # The patch embedding has no dX: a training step asks for no gradient of the images (input_grad=False). Its
    # windows are P + 2o pixels square where they overlap by o (patch_overlap): k = C (P + 2o)^2.
    for name, count, m, k, n in (("patch embedding", 1, images * patches, C * (P + 2 * o) ** 2, D),
                                 ("qkv", L, rows, D, 3 * D), ("attention output", L, rows, D, D),
                                 ("MLP in", L, rows, D, F), ("MLP out", L, rows, F, D)):
        out += [(name, "linear", "forward", count, (m, k, n))]
        out += [] if name == "patch embedding" else [(name, "linear", "backward dX", count, (m, n, k))]
        out += [(name, "linear", "backward dW", count, (k, m, n))]
    heads = images * H * L
    # S = Q K^T (N, dh) @ (dh, N): dQ = dS K (N, N) @ (N, dh), dK = dS^T Q (N, N) @ (N, dh).
    # O = A V (N, N) @ (N, dh): dA = dO V^T (N, dh) @ (dh, N), dV = A^T dO (N, N) @ (N, dh).
    out += [("scores Q K^T", "attention", "forward", heads, (N, dh, N)),
            ("scores Q K^T", "attention", "backward dQ", heads, (N, N, dh)),
            ("scores Q K^T", "attention", "backward dK", heads, (N, N, dh)),
            ("context A V", "attention", "forward", heads, (N, N, dh)),
            ("context A V", "attention", "backward dA", heads, (N, dh, N)),
            ("context A V", "attention", "backward dV", heads, (N, N, dh))]
    return [{"gemm": name, "kind": kind, "role": role, "count": count, "shape": shape}
            for name, kind, role, count, shape in out]


def rate(rows):
    """GFLOP/s of these timed products together."""
    return sum(r["mflop"] for r in rows) / sum(r["ms"] for r in rows)


def time_gemm(count, shape, repeats, batched):
    """Median milliseconds of ``count`` products of ``shape`` (m, k, n) in float32 on this thread."""
    import numpy as np

    m, k, n = shape
    rng = np.random.default_rng(0)
    lead = (count,) if batched else ()
    a = rng.standard_normal(lead + (m, k)).astype(np.float32)
    b = rng.standard_normal(lead + (k, n)).astype(np.float32)
    out = np.empty(lead + (m, n), np.float32)
    reps = 1 if batched else count
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        for _ in range(reps):
            np.matmul(a, b, out=out)
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times[1:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="cores, as npvit.DataParallel shards (default 2)")
    p.add_argument("--patch-dropout", type=float, default=0.0,
                   help="the share of patch tokens a training step leaves out (fast80: 0.25)")
    p.add_argument("--patch-overlap", type=int, default=0,
                   help="pixels each patch window reaches past its patch (swift80: 2)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats of each GEMM (median)")
    p.add_argument("--steps", type=int, default=9, help="timed training steps (median)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "floor.json"))
    a = p.parse_args(argv)
    bench.set_threads(1)                     # each shard's GEMMs run on one thread, as in DataParallel
    from npvit.runfiles import atomic_write_text

    cfg = {**bench.config("article", 4), "patch_dropout": a.patch_dropout, "patch_overlap": a.patch_overlap}
    patches = (cfg["image_size"] // cfg["patch_size"]) ** 2
    tokens = 1 + round((1 - a.patch_dropout) * patches)
    shard = a.batch_size // a.threads
    rows = gemms(cfg, shard, tokens)
    print(f"GEMMs of one training step, one shard of {shard} images x {tokens} tokens, float32, 1 thread")
    print(f"{'gemm':<18}{'role':<13}{'count':>6}  {'m x k x n':<18}{'MFLOP':>9}{'ms':>9}{'GFLOP/s':>9}")
    for r in rows:
        m, k, n = r["shape"]
        r["mflop"] = 2 * m * k * n * r["count"] / 1e6
        r["ms"] = time_gemm(r["count"], r["shape"], a.repeats, r["kind"] == "attention")
        r["gflops"] = r["mflop"] / r["ms"]
        print(f"{r['gemm']:<18}{r['role']:<13}{r['count']:>6}  {f'{m} x {k} x {n}':<18}{r['mflop']:>9.1f}"
              f"{r['ms']:>9.2f}{r['gflops']:>9.1f}")
    linear = rate([r for r in rows if r["kind"] == "linear"])                 # GFLOP/s on one core
    attention = rate([r for r in rows if r["kind"] == "attention"])
    flop = a.threads * sum(r["mflop"] for r in rows) / 1e3                       # GFLOP per batch
    floor_ms = sum(r["mflop"] for r in rows) / linear        # each core's shard, every FLOP at the Linear rate
    gemm_ms = sum(r["ms"] for r in rows)
    # The whole step in a fresh process, the threads set before NumPy loads (bench_train_step's child).
    step = bench.run_child({"framework": "npvit", "backend": "numpy", "model": "article", "patch": 4,
                            "batch": a.batch_size, "repeats": a.steps, "warmup": 2, "threads": a.threads,
                            "patch_dropout": a.patch_dropout, "patch_overlap": a.patch_overlap})
    step_ms = statistics.median(step["train_ms"])
    print(f"\nGEMM FLOPs per batch of {a.batch_size}: {flop:.2f} GFLOP; on one core the Linear GEMMs run at "
          f"{linear:.1f} GFLOP/s, the attention's at {attention:.1f}")
    print(f"floor (every FLOP at the Linear rate, {a.threads} cores): {floor_ms:.1f} ms; "
          f"the GEMMs as timed: {gemm_ms:.1f} ms per shard")
    print(f"npvit training step (median of {a.steps}): {step_ms:.1f} ms = {step_ms / floor_ms:.2f}x the floor")
    result = {"machine": bench.machine_info("numpy"), "batch_size": a.batch_size, "threads": a.threads,
              "patch_dropout": a.patch_dropout, "patch_overlap": a.patch_overlap, "tokens": tokens, "gemms": rows,
              "gflop_per_batch": flop, "linear_gflops_per_core": linear, "attention_gflops_per_core": attention,
              "floor_ms": floor_ms, "gemm_ms_per_shard": gemm_ms, "step_ms": step["train_ms"],
              "step_over_floor": step_ms / floor_ms}
    atomic_write_text(a.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
