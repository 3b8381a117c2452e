#!/usr/bin/env python
"""Processes against threads on one machine, processes across two hosts, and what an all-reduce costs.

    python benchmarks/bench_mpi.py                 # needs the [mpi] extra (mpi4py + MPICH from PyPI)

1. The article's model, a training step at batch 256 (forward, loss, backward, all-reduce, AdamW):
   1 process x 2 threads (npvit.DataParallel) against 1, 2 and 4 processes x 1 thread (MPI, 256/N rows each),
   on one host (MPI's shared memory, as it picks between processes of one machine; and TCP over the loopback
   interface) and, as root, across two hosts made of network namespaces (reference/two_hosts.py: TCP over a veth
   link, 1 and 2 processes per host): ms per step, of which the all-reduce, and peak resident memory.
2. ``Allreduce`` (sum, in place) of the article model's flat gradient buffer (119,098 float32 values,
   0.45 MiB) and of buffers 10x and 100x that size, between 2 processes on each of those links; and the
   links' latency (8-byte ping-pong) and bandwidth (4 MiB ping-pong), measured in the same run.

Every process of this machine shares its 2 cores: 4 processes are oversubscribed, and two "hosts" here share
one memory bus, so the numbers say what the link costs, not what two real machines would gain.
Prints the tables and writes everything to JSON (default benchmarks/results/mpi.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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
    reduced = []

    def reduce(g):                  # the step's all-reduce, timed
        t = time.perf_counter()
        world.allreduce_(g)
        reduced.append(time.perf_counter() - t)

    times = []
    for i in range(warmup + steps):
        world.barrier()
        t = time.perf_counter()
        train_step(net, opt, x[rows], y[rows], y[rows], global_batch=256,
                   reduce_grads=reduce if world.size > 1 else None)
        world.barrier()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    allreduce_ms = 1000 * statistics.median(reduced[warmup:]) if reduced else 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024           # MiB (Linux reports KiB)
    peaks = world.gather(peak)
    if world.rank == 0:
        ms = 1000 * statistics.median(times)
        print(json.dumps({"processes": world.size, "threads": threads, "step_ms": ms, "allreduce_ms": allreduce_ms,
                          "images_per_s": 256 / ms * 1000,
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
    if world.size == 2:             # the link itself: 8-byte and 4 MiB ping-pongs
        comm = world.comm
        for n, label in ((1, "latency_us"), (524_288, "bandwidth_gbs")):
            buf = np.zeros(n, np.float64)
            times = []
            for i in range(reps if n == 1 else max(10, reps // 10)):
                world.barrier()
                t = time.perf_counter()
                if world.rank == 0:
                    comm.Send(buf, dest=1)
                    comm.Recv(buf, source=1)
                else:
                    comm.Recv(buf, source=0)
                    comm.Send(buf, dest=0)
                times.append(time.perf_counter() - t)
            rtt = statistics.median(times[2:])
            out.append({label: 1e6 * rtt / 2 if n == 1 else 2 * n * 8 / rtt / 1e9})
    if world.rank == 0:
        print(json.dumps(out))


def run(cmd):
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE")}
    env["PYTHONPATH"] = REPO
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{p.stdout}\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def links(mpiexec, hosts):
    """How each link runs N processes: {link: function(N, argv) -> command}."""
    tcp = ["-genv", "UCX_TLS", "tcp,self"]
    found = {"one host, shared memory": lambda n, argv: [mpiexec, "-n", str(n), *argv],
             "one host, TCP over loopback": lambda n, argv: [mpiexec, "-n", str(n), *tcp, *argv]}
    if hosts is not None:
        found["two hosts, TCP over veth"] = lambda n, argv: hosts.mpiexec(argv, per_host=n // 2)
    return found


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
    from reference.two_hosts import Refused, TwoHosts, find_mpiexec

    mpiexec = find_mpiexec()
    if mpiexec is None:
        print("error: no mpiexec: pip install -e \".[mpi]\"", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        try:
            hosts = stack.enter_context(TwoHosts(tmp))
        except Refused as e:
            print(f"note: no two-host measurements: {e}", file=sys.stderr)
            hosts = None
        return measure(a, mpiexec, links(mpiexec, hosts))


def measure(a, mpiexec, by_link):
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    train = me + ["--child", "train", "--threads", "1"]
    configs = {"1 process x 2 threads": me + ["--child", "train", "--threads", "2"],
               "1 process x 1 thread": train}
    for link, command in by_link.items():
        for n in (2, 4):
            configs[f"{n} processes, {link}"] = command(n, train)
    results = {name: [] for name in configs}
    for _ in range(a.rounds):
        for name, cmd in configs.items():
            results[name].append(run(cmd))
    print("article model, training step at batch 256 (forward, loss, backward, all-reduce, AdamW), "
          f"median of {a.steps} steps, {a.rounds} alternating rounds")
    print(f"{'configuration':<46}{'ms/step':>9}{'all-reduce':>11}{'images/s':>10}   {'ms/step per round':<20}"
          f"{'peak RSS MiB per process'}")
    summary = {}
    for name, rs in results.items():
        ms = statistics.median(r["step_ms"] for r in rs)
        ar_ms = statistics.median(r["allreduce_ms"] for r in rs)
        summary[name] = {"step_ms": ms, "allreduce_ms": ar_ms, "images_per_s": 256 / ms * 1000, "rounds": rs}
        per_round = ", ".join(f"{r['step_ms']:.0f}" for r in rs)
        peaks = ", ".join(f"{m:.0f}" for m in rs[0]["peak_rss_mib"])
        print(f"{name:<46}{ms:>9.1f}{ar_ms:>11.2f}{256 / ms * 1000:>10.0f}   {per_round:<20}{peaks}")
    allreduce = {}
    for link, command in by_link.items():
        ar = run(command(2, [sys.executable, os.path.abspath(__file__), "--child", "allreduce", "--reps",
                             str(a.reps)]))
        allreduce[link] = ar
        sizes, link_stats = ar[:-2], {k: v for d in ar[-2:] for k, v in d.items()}
        print(f"\nAllreduce (sum, in place) between 2 processes, {link}, {a.reps} repeats; the link: "
              f"{link_stats['latency_us']:.1f} us one way (8 bytes), {link_stats['bandwidth_gbs']:.2f} GB/s (4 MiB)")
        print(f"{'float32 values':>15}{'MiB':>8}{'median us':>11}{'p90 us':>9}{'GB/s':>7}")
        for r in sizes:
            print(f"{r['values']:>15,}{r['mib']:>8.2f}{r['median_us']:>11.0f}{r['p90_us']:>9.0f}"
                  f"{r['mib'] * 2**20 / (r['median_us'] * 1e-6) / 1e9:>7.2f}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    from mpi4py import MPI

    with open(a.json, "w") as f:
        json.dump({"train": summary, "allreduce": allreduce, "machine": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "mpi": MPI.Get_library_version().splitlines()[0],
                   "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
