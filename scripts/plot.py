#!/usr/bin/env python
"""Training curves (loss and accuracy, train and test) from a run's metrics.jsonl, as a PNG."""
import sys

from npvit.cli import run_main
from npvit.commands import plot_main

if __name__ == "__main__":
    sys.exit(run_main(plot_main))
