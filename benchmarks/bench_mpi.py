#!/usr/bin/env python
"""Processes against threads on one machine, and what one all-reduce of the gradients costs.

    python benchmarks/bench_mpi.py                 # needs the [mpi] extra (mpi4py + MPICH from PyPI)

1. The article's model, a training step at batch 256 (forward, loss, backward, all-reduce, AdamW):
   1 process x 2 threads (npvit.DataParallel) against 2 processes x 1 thread (MPI, 128 rows each):
   images/s and the peak resident memory of each process.
2. ``Allreduce`` (sum, in place) of the article model's flat gradient buffer (119,098 float32 values,
   0.45 MiB) and of buffers 10x and 100x that size, between 2 processes on this machine.

Prints the tables and writes everything to JSON (default benchmarks/results/mpi.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)        # npvit from this checkout (NumPy loads later, after the thread settings)


def child_train(threads, steps, warmup):
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    import resource

    import numpy as np

    import npvit
    from npvit.distributed import get_world, shard
    from npvit.optim import AdamW
    from npvit.training.step import train_step

    world = get_world()
    model = npvit.ViT(seed=0)
    net = npvit.DataParallel(model, threads) if threads > 1 else model
    opt = AdamW(model, lr=1e-3, weight_decay=0.05)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    rows = shard(256, world)
    reduce = world.allreduce_ if world.size > 1 else None
    times = []
    for i in range(warmup + steps):
        world.barrier()
        t = time.perf_counter()
        train_step(net, opt, x[rows], y[rows], y[rows], global_batch=256, reduce_grads=reduce)
        world.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024           # MiB (Linux reports KiB)
    peaks = world.gather(peak)
    if world.rank == 0:
        ms = 1000 * statistics.median(times)
        print(json.dumps({"processes": world.size, "threads": threads, "step_ms": ms, "images_per_s": 256 / ms * 1000,
                          "step_ms_all": [1000 * t for t in times], "peak_rss_mib": peaks}))


def child_allreduce(reps):
    import numpy as np

    from npvit.distributed import get_world

    world = get_world()
    out = []
    for n in (119_098, 1_190_980, 11_909_800):
        a = np.ones(n, np.float32)
        for _ in range(10):
            world.allreduce_(a)
        times = []
        for _ in range(reps):
            world.barrier()
            t = time.perf_counter()
            world.allreduce_(a)
            times.append(time.perf_counter() - t)
        out.append({"values": n, "mib": n * 4 / 2**20, "median_us": 1e6 * statistics.median(times),
                    "p90_us": 1e6 * sorted(times)[int(0.9 * len(times))]})
    if world.rank == 0:
        print(json.dumps(out))


def run(cmd):
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of each configuration")
    p.add_argument("--reps", type=int, default=200, help="all-reduces timed per size")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "mpi.json"))
    p.add_argument("--child", choices=["train", "allreduce"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child == "train":
        return child_train(a.threads, a.steps, a.warmup)
    if a.child == "allreduce":
        return child_allreduce(a.reps)
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        print("error: no mpiexec: pip install -e \".[mpi]\"", file=sys.stderr)
        return 2
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    configs = {"1 process x 2 threads": me + ["--child", "train", "--threads", "2"],
               "2 processes x 1 thread": [mpiexec, "-n", "2"] + me + ["--child", "train", "--threads", "1"]}
    results = {name: [] for name in configs}
    for _ in range(a.rounds):
        for name, cmd in configs.items():
            results[name].append(run(cmd))
    print("article model, training step at batch 256 (forward, loss, backward, all-reduce, AdamW), "
          f"median of {a.steps} steps, {a.rounds} alternating rounds")
    print(f"{'configuration':<26}{'ms/step':>10}{'images/s':>10}   {'ms/step per round':<24}{'peak RSS MiB per process'}")
    summary = {}
    for name, rs in results.items():
        ms = statistics.median(r["step_ms"] for r in rs)
        summary[name] = {"step_ms": ms, "images_per_s": 256 / ms * 1000, "rounds": rs}
        per_round = ", ".join(f"{r['step_ms']:.0f}" for r in rs)
        peaks = ", ".join(f"{m:.0f}" for m in rs[0]["peak_rss_mib"])
        print(f"{name:<26}{ms:>10.1f}{256 / ms * 1000:>10.0f}   {per_round:<24}{peaks}")
    ar = run([mpiexec, "-n", "2", sys.executable, os.path.abspath(__file__), "--child", "allreduce",
              "--reps", str(a.reps)])
    print(f"\nAllreduce (sum, in place) between 2 processes on this machine, {a.reps} repeats")
    print(f"{'float32 values':>15}{'MiB':>8}{'median us':>11}{'p90 us':>9}{'GB/s':>7}")
    for r in ar:
        print(f"{r['values']:>15,}{r['mib']:>8.2f}{r['median_us']:>11.0f}{r['p90_us']:>9.0f}"
              f"{r['mib'] * 2**20 / (r['median_us'] * 1e-6) / 1e9:>7.2f}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    from mpi4py import MPI

    with open(a.json, "w") as f:
        json.dump({"train": summary, "allreduce": ar, "machine": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "mpi": MPI.Get_library_version().splitlines()[0],
                   "python": platform.python_version()}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
