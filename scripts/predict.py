#!/usr/bin/env python
"""Classify image files with a trained checkpoint: the top-5 classes of each and their probabilities."""
import sys

from npvit.cli import run

if __name__ == "__main__":
    sys.exit(run("predict"))
