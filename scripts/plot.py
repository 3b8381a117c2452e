#!/usr/bin/env python
"""Training curves (loss and accuracy, train and test) from a run's metrics.jsonl, as a PNG."""
import argparse
import os
import sys

from npvit.visualize import plot_curves, read_metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("metrics", help="metrics.jsonl, or the run's out dir")
    p.add_argument("-o", "--out", help="PNG to write (default: curves.png beside the metrics)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    path = os.path.join(args.metrics, "metrics.jsonl") if os.path.isdir(args.metrics) else args.metrics
    if not os.path.isfile(path):
        print(f"error: no metrics file at {path}", file=sys.stderr)
        return 2
    metrics = read_metrics(path)
    if not metrics:
        print(f"error: {path} holds no epochs yet", file=sys.stderr)
        return 2
    out = args.out or os.path.join(os.path.dirname(path), "curves.png")
    plot_curves(metrics, out, args.title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
