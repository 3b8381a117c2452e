#!/usr/bin/env python
"""Attention maps of a trained checkpoint over test images: the [CLS] token's attention averaged over
layers and heads (the article's figure) and attention rollout, overlaid on each image."""
import argparse
import sys

import numpy as np

from npvit.augment import normalize
from npvit.backend import to_device, to_numpy
from npvit.cli import positive_int, run_main
from npvit.data import load_dataset
from npvit.evaluate import check_labels, load_trained
from npvit.runfiles import check_writable
from npvit.visualize import attention_rollout, check_image_path, cls_attention, plot_attention


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py, or a .safetensors exported from one")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (or the image folder)")
    p.add_argument("--dataset", choices=["cifar10", "folder"], default="cifar10")
    p.add_argument("-n", type=positive_int, default=10, help="how many test images")
    p.add_argument("--seed", type=int, default=0, help="which test images (random choice)")
    p.add_argument("-o", "--out", default="attention.png", help="picture to write (.png, .pdf, .svg, .jpg)")
    args = p.parse_args(argv)
    check_image_path(args.out)
    check_writable(args.out)
    if args.seed < 0:
        p.error(f"argument --seed: expected an integer >= 0, got {args.seed}")
    model, meta = load_trained(args.checkpoint)
    c = model.config
    data = load_dataset(args.dataset, args.data_dir, c.image_size, c.num_channels)
    check_labels(data.y_test, meta["classes"], f"the test data in {args.data_dir}")
    idx = np.random.default_rng(args.seed).choice(len(data.y_test), size=min(args.n, len(data.y_test)), replace=False)
    images, labels = data.x_test[idx], data.y_test[idx]
    x = normalize(to_device(images, model.xp), meta["mean"], meta["std"], model.dtype)
    logits, atts = model(x, return_attention=True)
    preds = to_numpy(logits).argmax(-1)
    maps = {"CLS attention": cls_attention(atts), "rollout": attention_rollout(atts)}
    plot_attention(images, maps, labels, preds, meta["classes"], args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
