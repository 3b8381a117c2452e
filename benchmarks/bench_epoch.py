#!/usr/bin/env python
"""An epoch of training as a run takes it, with the next batch augmented on a helper thread while the step before
it trains (npvit/training/batches.py, ``PREFETCH``) and without: the loop's own time, augmentation included.

    python benchmarks/bench_epoch.py --data-dir ./data                # fast80 on 12,800 images, 3 rounds (~4 min)

Each round trains one epoch of the recipe (default fast80: TrivialAugment on half the images, crop and flip) from
the same seed in a fresh process, alternating the two settings; the epoch's seconds come from its metrics line.
Prints the table and writes JSON (default benchmarks/results/epoch.json).
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


def child(prefetch, args):
    sys.path.insert(0, REPO)
    from npvit.training import batches
    from npvit.training.run import train
    from npvit.training.settings import build_config

    batches.PREFETCH = prefetch
    with tempfile.TemporaryDirectory() as out:
        settings = build_config(overrides={"recipe": args.recipe, "data_dir": args.data_dir, "out_dir": out,
                                           "epochs": 1, "train_limit": args.images, "test_limit": 500,
                                           "threads": args.threads, "progress": False})
        history = train(settings)
    print(json.dumps({"prefetch": prefetch, "seconds": history[0]["seconds"],
                      "images_per_s": history[0]["images_per_s"]}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--recipe", default="fast80")
    p.add_argument("--images", type=int, default=12_800, help="training images of the epoch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "epoch.json"))
    p.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a.child == "on", a)
    results = {"on": [], "off": []}
    for _ in range(a.rounds):
        for setting in ("on", "off"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", setting, "--data-dir", a.data_dir,
                   "--recipe", a.recipe, "--images", str(a.images), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[setting].append(json.loads(out.strip().splitlines()[-1]))
    print(f"one epoch of --recipe {a.recipe} on {a.images:,} images, {a.threads} threads, {a.rounds} alternating "
          f"rounds")
    print(f"{'next batch augmented':<34}{'s/epoch':>9}{'images/s':>10}   per round")
    summary = {}
    for setting, label in (("off", "on the main thread, between steps"), ("on", "on a helper thread, overlapped")):
        rs = results[setting]
        s = statistics.median(r["seconds"] for r in rs)
        summary[setting] = {"seconds": s, "images_per_s": a.images / s, "rounds": rs}
        print(f"{label:<34}{s:>9.2f}{a.images / s:>10.0f}   " + ", ".join(f"{r['seconds']:.2f}" for r in rs))
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"recipe": a.recipe, "images": a.images, "threads": a.threads, "results": summary,
                   "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}, f, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
