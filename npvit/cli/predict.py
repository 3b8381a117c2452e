"""The top classes of image files under a trained checkpoint (``npvit predict``)."""
import argparse
import os

import numpy as np

from ..data import load_image
from ..inference import predict_proba, topk
from .runner import add_foreign_args, positive_int, trained


CHECKPOINT_SUFFIXES = (".npz", ".safetensors")


def main(argv=None, prog=None):
    """Classify image files with a trained checkpoint: the top-5 classes of each and their probabilities."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("paths", nargs="+", metavar="[CHECKPOINT] IMAGE [IMAGE ...]",
                   help="a .npz written by scripts/train.py, a .safetensors or a transformers model directory "
                        "(without it: the weights that ship with npvit), then one or more image files (png, jpg, ...), each resized to the model's "
                        "image size")
    p.add_argument("-k", type=positive_int, default=5, help="how many classes to show (all, if fewer)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    first_is_checkpoint = args.paths[0].lower().endswith(CHECKPOINT_SUFFIXES) or os.path.isdir(args.paths[0])
    args.checkpoint, images = (args.paths[0], args.paths[1:]) if first_is_checkpoint else (None, args.paths)
    if not images and os.path.isdir(args.checkpoint) and not os.path.isfile(os.path.join(args.checkpoint,
                                                                                          "config.json")):
        p.error(f"{args.checkpoint} is a folder, neither a model directory (it has no config.json) nor an image: "
                f"name the image files in it, e.g. {os.path.join(args.checkpoint, '*.png')}")
    if not images:
        p.error(f"no image given after the checkpoint {args.checkpoint}")
    checkpoints = [x for x in images if x.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.isdir(x)]
    if checkpoints:
        p.error(f"{checkpoints[0]} is a checkpoint among the images: give one checkpoint, first")
    model, meta = trained(args)
    x = np.concatenate([load_image(path, model.config.image_size, model.config.num_channels) for path in images])
    probs = predict_proba(model, x, meta["mean"], meta["std"])
    for path, row in zip(images, probs):
        if len(images) > 1:
            print(f"{path}:")
        for name, prob in topk(row, meta["classes"], args.k):
            print(f"{'  ' if len(images) > 1 else ''}{name:<12} {100 * prob:6.2f}%")
    return 0
