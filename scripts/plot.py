#!/usr/bin/env python
"""Training curves (loss and accuracy, train and test) from a run's metrics.jsonl, as a PNG."""
import sys

from npvit.cli import run

if __name__ == "__main__":
    sys.exit(run("plot"))
