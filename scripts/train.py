#!/usr/bin/env python
"""Train a ViT on CIFAR-10 with npvit. See --help; the command line is npvit/cli/train.py, the loop npvit/training/run.py."""
import sys

from npvit.cli import run

if __name__ == "__main__":
    sys.exit(run("train"))
