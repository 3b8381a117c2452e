#!/usr/bin/env python
"""Test accuracy, per-class accuracy and confusion matrix of a trained checkpoint."""
import sys

from npvit.cli import run

if __name__ == "__main__":
    sys.exit(run("evaluate"))
