#!/usr/bin/env python
"""Train a ViT on CIFAR-10 with npvit. See --help; the loop lives in npvit/train.py."""
import sys

from npvit.train import main

if __name__ == "__main__":
    sys.exit(main())
