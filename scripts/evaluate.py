#!/usr/bin/env python
"""Test accuracy, per-class accuracy and confusion matrix of a trained checkpoint."""
import argparse
import json
import sys

import numpy as np

from npvit.cli import positive_int, run_main
from npvit.data import load_dataset
from npvit.evaluate import check_labels, confusion_matrix, load_trained, predict_proba
from npvit.parallel import default_threads, threads_arg
from npvit.runfiles import atomic_write_text, check_writable


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py (e.g. runs/vit/best.npz), or a "
                   ".safetensors exported from one")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (or the image folder)")
    p.add_argument("--dataset", choices=["cifar10", "folder"], default="cifar10")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="only the first N test images")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--threads", type=threads_arg, default="auto", metavar="N|auto",
                   help="numpy: run each batch as N shards on N cores (auto: every core this process may use)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.json:
        check_writable(args.json)            # fail now, not after the evaluation
    if isinstance(args.threads, int) and args.threads > default_threads():
        print(f"warning: --threads {args.threads} is more than the {default_threads()} cores this process may "
              f"use; the shards will compete for cores and run slower", file=sys.stderr)
    model, meta = load_trained(args.checkpoint, args.backend, args.threads)
    c = model.config
    data = load_dataset(args.dataset, args.data_dir, c.image_size, c.num_channels).limit(test=args.test_limit)
    classes = meta["classes"]
    check_labels(data.y_test, classes, f"the test data in {args.data_dir}")
    preds = predict_proba(model, data.x_test, meta["mean"], meta["std"]).argmax(-1)
    y = data.y_test
    cm = confusion_matrix(y, preds, len(classes))
    acc = float((preds == y).mean())
    per_class = {name: float(cm[i, i] / max(cm[i].sum(), 1)) for i, name in enumerate(classes)}
    print(f"test accuracy: {100 * acc:.2f}% on {len(y)} images\n")
    print("per-class accuracy:")
    for name, a in per_class.items():
        print(f"  {name:<12} {100 * a:6.2f}%")
    w = max(len(n) for n in classes)
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    print(" " * (w + 1) + " ".join(f"{n[:5]:>5}" for n in classes))
    for i, name in enumerate(classes):
        print(f"{name:>{w}} " + " ".join(f"{v:>5}" for v in cm[i]))
    if args.json:
        atomic_write_text(args.json, json.dumps({"accuracy": acc, "per_class": per_class, "confusion": cm.tolist(),
                                                 "classes": classes}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
