#!/usr/bin/env python
"""Attention maps of a trained checkpoint over test images: the [CLS] token's attention averaged over
layers and heads (the article's figure) and attention rollout, overlaid on each image."""
import sys

from npvit.cli import run

if __name__ == "__main__":
    sys.exit(run("attention"))
