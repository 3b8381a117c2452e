#!/usr/bin/env python
"""Classify one image file with a trained checkpoint: the top-5 classes and their probabilities."""
import sys

from npvit.cli import run_main
from npvit.commands import predict_main

if __name__ == "__main__":
    sys.exit(run_main(predict_main))
