#!/usr/bin/env python
"""Classify one image file with a trained checkpoint: the top-5 classes and their probabilities."""
import argparse
import sys

from npvit.cli import positive_int, run_main
from npvit.data import load_image
from npvit.evaluate import load_trained, predict_proba, topk


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py, or a .safetensors exported from one")
    p.add_argument("image", help="an image file (png, jpg, ...); resized to the model's image size")
    p.add_argument("-k", type=positive_int, default=5, help="how many classes to show (all, if fewer)")
    args = p.parse_args(argv)
    model, meta = load_trained(args.checkpoint)
    x = load_image(args.image, model.config.image_size, model.config.num_channels)
    probs = predict_proba(model, x, meta["mean"], meta["std"])[0]
    for name, prob in topk(probs, meta["classes"], args.k):
        print(f"{name:<12} {100 * prob:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
