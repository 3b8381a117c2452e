#!/usr/bin/env python
"""Classify one image file with a trained checkpoint: the top-5 classes and their probabilities."""
import argparse
import sys

from npvit.data import load_image
from npvit.evaluate import load_trained, predict_proba, topk


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py")
    p.add_argument("image", help="an image file (png, jpg, ...); resized to the model's image size")
    p.add_argument("-k", type=int, default=5, help="how many classes to show")
    args = p.parse_args(argv)
    try:
        model, meta = load_trained(args.checkpoint)
        x = load_image(args.image, model.config.image_size, model.config.num_channels)
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    probs = predict_proba(model, x, meta["mean"], meta["std"])[0]
    for name, prob in topk(probs, meta["classes"], args.k):
        print(f"{name:<12} {100 * prob:6.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
