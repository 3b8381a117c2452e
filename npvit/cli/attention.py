"""Attention maps of a trained checkpoint over test images (``npvit attention``)."""
import argparse

import numpy as np

from ..augment import normalize
from ..backend import to_device, to_numpy
from ..data import load_dataset
from ..inference import check_labels
from ..runfiles import check_writable
from ..visualize import attention_maps, check_image_path, plot_attention
from .runner import add_foreign_args, positive_int, trained


def main(argv=None, prog=None):
    """Attention maps of a trained checkpoint over test images, overlaid on each image: for a model that
classifies from [CLS] (the article's), that token's attention to each patch averaged over layers and heads
(the article's figure) and its attention rollout; for one that classifies from the mean of the patch tokens,
the attention each patch receives from them, and their rollout."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("checkpoint", nargs="?", help="a .npz written by scripts/train.py, a .safetensors or a transformers "
                   "model directory (default: the weights that ship with npvit)")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (or the image folder)")
    p.add_argument("--dataset", choices=["cifar10", "folder"], default="cifar10")
    p.add_argument("-n", type=positive_int, default=10, help="how many test images")
    p.add_argument("--seed", type=int, default=0, help="which test images (random choice)")
    p.add_argument("-o", "--out", default="attention.png", help="picture to write (.png, .pdf, .svg, .jpg)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    check_image_path(args.out)
    check_writable(args.out)
    if args.seed < 0:
        p.error(f"argument --seed: expected an integer >= 0, got {args.seed}")
    model, meta = trained(args)
    c = model.config
    data = load_dataset(args.dataset, args.data_dir, c.image_size, c.num_channels, splits=("test",))
    check_labels(data.y_test, meta["classes"], f"the test data in {args.data_dir}")
    idx = np.random.default_rng(args.seed).choice(len(data.y_test), size=min(args.n, len(data.y_test)), replace=False)
    images, labels = data.x_test[idx], data.y_test[idx]
    x = normalize(to_device(images, model.xp), meta["mean"], meta["std"], model.dtype)
    logits, atts = model(x, return_attention=True)
    preds = to_numpy(logits).argmax(-1)
    maps = attention_maps(atts, c.pooling)
    plot_attention(images, maps, labels, preds, meta["classes"], args.out)
    print(f"wrote {args.out}")
    return 0
