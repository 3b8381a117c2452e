#!/usr/bin/env python
"""npvit against JAX's jit on the same ViT, on the CPU: milliseconds per training step (forward, softmax
cross-entropy, backward, AdamW) and per inference batch, at steady state.

The JAX model is the article's ViT written in jax.numpy (below, 40 lines), loaded with npvit's weights; its training
step and its forward are each one ``jax.jit`` function, the step donating its buffers as a JAX user would write it.
Before timing, its logits are checked against npvit's on the same batch. Each measurement runs in a fresh process
pinned to ``--threads`` cores (XLA sizes its thread pool from the cores it may use); npvit runs as in
bench_train_step.py (its batch as one shard per thread). Warm-up as bench_train_step.py: at least ``--warmup`` steps
and more until the last three are within 10% of their median (JAX's first call compiles), then ``--repeats`` timed
steps; rounds alternate npvit and JAX.

JAX is not a dependency of npvit: without it (``pip install jax``, CPU) this script says so and exits 0.

    python benchmarks/bench_jax.py                        # article model, patch 4, batch 256, 2 threads
    python benchmarks/bench_jax.py --batch-sizes 128 256 --rounds 3
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train_step as bench  # noqa: E402   (puts the checkout on sys.path; loads no NumPy)

REPO = bench.REPO


def jax_vit(config):
    """(init(state_dict) -> params, forward(params, x) -> logits): the article's ViT in jax.numpy, npvit's names."""
    import jax
    import jax.numpy as jnp

    D, H, L = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
    P, hs = config["patch_size"], config["hidden_size"] // config["num_attention_heads"]

    def layernorm(x, w, b, eps=1e-5):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps) * w + b

    def gelu(x):            # the article's tanh GELU
        return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    def forward(p, x):
        B, C, S, _ = x.shape
        patches = x.reshape(B, C, S // P, P, S // P, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, -1, C * P * P)
        w = p["embedding.patch_embeddings.projection.weight"].reshape(D, -1)
        h = patches @ w.T + p["embedding.patch_embeddings.projection.bias"]                 # (B, 64, D)
        cls = jnp.broadcast_to(p["embedding.cls_token"], (B, 1, D))
        h = jnp.concatenate([cls, h], axis=1) + p["embedding.position_embeddings"]          # (B, N, D)
        N = h.shape[1]
        for i in range(L):
            b = f"encoder.blocks.{i}."
            x1 = layernorm(h, p[b + "layernorm_1.weight"], p[b + "layernorm_1.bias"])
            qkv = x1 @ p[b + "attention.qkv_projection.weight"].T + p[b + "attention.qkv_projection.bias"]
            q, k, v = (t.reshape(B, N, H, hs).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1))
            att = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs), axis=-1)      # (B, H, N, N)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(B, N, D)
            h = h + ctx @ p[b + "attention.output_projection.weight"].T + p[b + "attention.output_projection.bias"]
            x2 = layernorm(h, p[b + "layernorm_2.weight"], p[b + "layernorm_2.bias"])
            m = gelu(x2 @ p[b + "mlp.dense_1.weight"].T + p[b + "mlp.dense_1.bias"])
            h = h + m @ p[b + "mlp.dense_2.weight"].T + p[b + "mlp.dense_2.bias"]
        return h[:, 0] @ p["classifier.weight"].T + p["classifier.bias"]

    return forward


def jax_step(forward, lr=1e-3, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8):
    """One jitted AdamW training step (torch.optim.AdamW's arithmetic), donating params and optimiser state."""
    import jax
    import jax.numpy as jnp

    def loss_fn(p, x, y):
        logp = jax.nn.log_softmax(forward(p, x), axis=-1)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    def step(p, m, v, t, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        t = t + 1
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        p = jax.tree_util.tree_map(lambda p, m, v: p * (1 - lr * weight_decay)
                                   - lr / bc1 * m / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps), p, m, v)
        return p, m, v, t, loss

    return jax.jit(step, donate_argnums=(0, 1, 2))


def measure(framework, model, patch, batch, repeats, warmup, threads):
    """One framework's (train, infer) times, in this (fresh) process pinned to ``threads`` cores."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    if framework == "npvit":
        out = bench.measure("npvit", "numpy", model, patch, batch, repeats, warmup, threads)
        return {k: out[k] for k in ("train_ms", "infer_ms", "train_warmup_ms", "infer_warmup_ms")}
    bench.set_threads(threads)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import npvit

    cfg = bench.config(model, patch)
    ours = npvit.ViT(cfg, seed=0)
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y_host = rng.integers(0, 10, batch)
    forward = jax_vit(cfg)
    params = {k: jnp.asarray(v) for k, v in ours.state_dict().items()}
    x, y = jnp.asarray(x_host), jnp.asarray(y_host)
    infer = jax.jit(forward)
    ours.eval()
    error = float(np.abs(np.asarray(infer(params, x)) - ours(x_host)).max())
    if not error < 1e-3:
        raise AssertionError(f"JAX's logits differ from npvit's by {error} on the same weights: not the same model")
    step = jax_step(forward)
    state = [params, jax.tree_util.tree_map(jnp.zeros_like, params), jax.tree_util.tree_map(jnp.zeros_like, params),
             jnp.zeros((), jnp.float32)]

    def train():
        state[:] = step(*state, x, y)[:4]
        state[0]["classifier.bias"].block_until_ready()

    def forward_only():
        infer(state[0], x).block_until_ready()

    def once(fn):
        t = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t)

    def timed(fn):
        warm = [once(fn) for _ in range(warmup)]
        while len(warm) < bench.MAX_WARMUP and not bench.settled(warm[-3:]):
            warm.append(once(fn))
        return [once(fn) for _ in range(repeats)], warm

    (train_ms, train_warm), (infer_ms, infer_warm) = timed(train), timed(forward_only)
    return {"train_ms": train_ms, "infer_ms": infer_ms, "train_warmup_ms": train_warm, "infer_warmup_ms": infer_warm,
            "logits_max_abs_error": error, "jax": jax.__version__}


def run_child(args):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)], capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="cores for each framework (default 2)")
    p.add_argument("--models", nargs="+", choices=list(bench.MODELS), default=["article"])
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[256])
    p.add_argument("--repeats", type=int, default=10, help="timed steps per round, after the warm-up")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (npvit, jax, npvit, jax, ...)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps at least; more until the step time settles")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "jax.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(**json.loads(a.child))))
        return 0
    if importlib.util.find_spec("jax") is None:
        print("skipped: JAX is not installed here (pip install jax, for the CPU); npvit does not need it")
        return 0
    results = []
    print(f"npvit vs JAX jit, CPU, {a.threads} threads, median of {a.rounds} alternating rounds x {a.repeats} steps "
          f"after at least {a.warmup} warm-up steps (more until settled)")
    header = f"{'model':<8}{'batch':>6} | {'train ms':>9}{'jax':>9}{'ratio':>7} | {'infer ms':>9}{'jax':>9}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    for model in a.models:
        for b in a.batch_sizes:
            raw = {fw: {"train_ms": [], "infer_ms": [], "train_warmup_ms": [], "infer_warmup_ms": []}
                   for fw in ("npvit", "jax")}
            row = {"model": model, "patch": a.patch, "batch": b}
            for _ in range(a.rounds):
                for fw in raw:
                    r = run_child(dict(framework=fw, model=model, patch=a.patch, batch=b, repeats=a.repeats,
                                       warmup=a.warmup, threads=a.threads))
                    for k in raw[fw]:
                        (raw[fw][k].append if k.endswith("warmup_ms") else raw[fw][k].extend)(r.pop(k))
                    row.update({f"{fw}_{k}": v for k, v in r.items()})
            for fw, times in raw.items():
                for k, v in times.items():
                    row[f"{fw}_{k}"] = v if k.endswith("warmup_ms") else statistics.median(v)
                    if not k.endswith("warmup_ms"):
                        row[f"{fw}_{k}_all"] = v
            for k in ("train_ms", "infer_ms"):
                row[f"ratio_{k}"] = row[f"npvit_{k}"] / row[f"jax_{k}"]
            results.append(row)
            print(f"{model:<8}{b:>6} | {row['npvit_train_ms']:>9.1f}{row['jax_train_ms']:>9.1f}{row['ratio_train_ms']:>7.2f}"
                  f" | {row['npvit_infer_ms']:>9.1f}{row['jax_infer_ms']:>9.1f}{row['ratio_infer_ms']:>7.2f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json + ".tmp", "w") as f:
        json.dump({"threads": a.threads, "repeats": a.repeats, "rounds": a.rounds, "warmup": a.warmup,
                   "info": bench.machine_info("numpy"), "results": results}, f, indent=1)
    os.replace(a.json + ".tmp", a.json)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
