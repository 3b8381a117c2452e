#!/usr/bin/env python
"""Train a ViT on CIFAR-10 with npvit. See --help; the command line is npvit/train_cli.py, the loop npvit/train.py."""
import sys

from npvit.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
