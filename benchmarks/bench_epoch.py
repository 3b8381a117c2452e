#!/usr/bin/env python
"""An epoch of training as a run takes it (batches gathered and augmented, steps, the optimiser), for this source
tree and others, in alternating rounds: what a change to the training loop saves, in the run's own seconds.

    python benchmarks/bench_epoch.py --data-dir ./data                      # this tree, swift80, 12,800 images
    python benchmarks/bench_epoch.py --data-dir ./data --tree ../old --rounds 6   # against another checkout

``--tree`` names other checkouts of npvit (a git worktree or clone at another commit): each round trains one
epoch of the recipe from the same seed in a fresh process per tree, with that tree first on PYTHONPATH, and
takes the epoch's seconds from its metrics (evaluation excluded). Prints each tree's rounds, median and
minimum, and writes JSON (default benchmarks/results/epoch.json). Epoch times move with the machine's state:
compare trees measured in the same alternating rounds, with the machine otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(a):
    """One epoch in this process, npvit imported from PYTHONPATH's tree: prints {"seconds": ...}."""
    import npvit
    from npvit.training.run import train
    from npvit.training.settings import build_config

    with tempfile.TemporaryDirectory() as out:
        settings = build_config(overrides={"recipe": a.recipe, "data_dir": a.data_dir, "out_dir": out, "epochs": 1,
                                           "train_limit": a.images, "test_limit": 100, "threads": a.threads,
                                           "download": False, "progress": False})
        history = train(settings)
    print(json.dumps({"seconds": history[0]["seconds"], "npvit": os.path.dirname(os.path.abspath(npvit.__file__))}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--recipe", default="swift80", help="the recipe (default swift80, the default one)")
    p.add_argument("--images", type=int, default=12_800, help="training images of the epoch (default 12,800)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tree", action="append", default=[], help="another npvit checkout to time (repeatable)")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "epoch.json"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)
    trees = [REPO] + [os.path.abspath(t) for t in a.tree]
    for tree in trees[1:]:
        if not os.path.isfile(os.path.join(tree, "npvit", "__init__.py")):
            p.error(f"--tree {tree}: no npvit/ package there")
    seconds = {tree: [] for tree in trees}
    for _ in range(a.rounds):
        for tree in trees:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--data-dir", a.data_dir, "--recipe",
                   a.recipe, "--images", str(a.images), "--threads", str(a.threads)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"the epoch on {tree} failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if os.path.realpath(result["npvit"]) != os.path.realpath(os.path.join(tree, "npvit")):
                raise RuntimeError(f"the epoch meant for {tree} imported npvit from {result['npvit']}")
            seconds[tree].append(result["seconds"])
    print(f"one epoch of --recipe {a.recipe} on {a.images:,} images, {a.threads} threads, {a.rounds} alternating rounds")
    print(f"{'tree':<40}{'median s':>9}{'min s':>8}{'images/s':>10}   rounds")
    rows = []
    for tree, ts in seconds.items():
        median = statistics.median(ts)
        rows.append({"tree": tree, "seconds": ts, "median": median, "min": min(ts)})
        print(f"{tree:<40}{median:>9.2f}{min(ts):>8.2f}{a.images / median:>10.0f}   " + ", ".join(f"{t:.2f}" for t in ts))
    sys.path.insert(0, REPO)
    from npvit.runfiles import atomic_write_text

    atomic_write_text(a.json, json.dumps({"recipe": a.recipe, "images": a.images, "threads": a.threads, "trees": rows,
                                          "machine": platform.processor() or platform.machine(),
                                          "cores": os.cpu_count(), "python": platform.python_version(),
                                          "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
