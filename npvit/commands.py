"""The command-line programs besides training: evaluate, predict, plot, attention, export.

Each is ``<name>_main(argv, prog)``, run by ``npvit <name>`` (npvit/cli.py), ``python -m npvit <name>``
and the thin ``scripts/<name>.py``; errors a user can fix are one line (npvit.cli.run_main).
"""
import argparse
import json
import os
import sys

import numpy as np

from .augment import normalize
from .backend import to_device, to_numpy
from .checkpoint import export_safetensors
from .cli import positive_int
from .data import load_dataset, load_image
from .errors import UserError
from .inference import PRETRAINED, assumed_note, check_labels, confusion_matrix, load_trained, predict_proba, topk
from .options import add_model_args, model_config_from
from .parallel import one_blas_thread, threads_arg, threads_warning
from .runfiles import atomic_write_text, check_writable, read_metrics
from .visualize import attention_maps, check_image_path, plot_attention, plot_curves


def add_foreign_args(p):
    """--config and the model flags: the model of a .safetensors saved outside npvit (by PyTorch)."""
    p.add_argument("--config", metavar="FILE", help="JSON file of the model's config keys (a run's config.json "
                   "will do), for a .safetensors saved outside npvit, which carries none")
    add_model_args(p, note=lambda key: "for weights that carry no config")


def trained(args, **kw):
    """The model and metadata ``args.checkpoint`` holds (load_trained), with the config the flags give for a
    file that carries none; a note on stderr says what was assumed about such a file. No checkpoint: the
    weights that ship with npvit, and a note that says so."""
    if args.checkpoint is None:
        args.checkpoint = PRETRAINED
        model, meta = load_trained(PRETRAINED, **kw)
        card = ", ".join(f"{k} {meta[k]}" for k in ("recipe", "seed") if k in meta)
        acc = f", {100 * meta['test_acc']:.2f}% on CIFAR-10's test set" if "test_acc" in meta else ""
        print(f"no checkpoint given: using the weights that ship with npvit ({card}{acc}): {PRETRAINED}",
              file=sys.stderr)
        return model, meta
    model, meta = load_trained(args.checkpoint, config=model_config_from(vars(args), args.config), **kw)
    if assumed_note(args.checkpoint, meta):
        print(assumed_note(args.checkpoint, meta), file=sys.stderr)
    return model, meta


def evaluate_main(argv=None, prog=None):
    """Test accuracy, per-class accuracy and confusion matrix of a trained checkpoint."""
    p = argparse.ArgumentParser(prog=prog, description=evaluate_main.__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py (e.g. runs/vit/best.npz), or a "
                   ".safetensors exported from one")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (or the image folder)")
    p.add_argument("--dataset", choices=["cifar10", "folder"], default="cifar10")
    p.add_argument("--test-limit", type=positive_int, metavar="N", help="only the first N test images")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--threads", type=threads_arg, default="auto", metavar="N|auto",
                   help="numpy: run each batch as N shards on N cores (auto: every core this process may use)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--tta-flip", action="store_true", help="average each image's probabilities with its mirror "
                   "image's (test-time augmentation)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    if args.json:
        check_writable(args.json)            # fail now, not after the evaluation
    if threads_warning(args.threads):
        print(threads_warning(args.threads), file=sys.stderr)
    model, meta = trained(args, backend=args.backend, threads=args.threads)
    c = model.config
    data = load_dataset(args.dataset, args.data_dir, c.image_size, c.num_channels, splits=("test",))
    data = data.limit(test=args.test_limit)
    classes = meta["classes"]
    check_labels(data.y_test, classes, f"the test data in {args.data_dir}")
    with one_blas_thread(model):            # --threads 1: one core
        preds = predict_proba(model, data.x_test, meta["mean"], meta["std"], tta_flip=args.tta_flip).argmax(-1)
    y = data.y_test
    cm = confusion_matrix(y, preds, len(classes))
    acc = float((preds == y).mean())
    per_class = {name: float(cm[i, i] / max(cm[i].sum(), 1)) for i, name in enumerate(classes)}
    print(f"test accuracy: {100 * acc:.2f}% on {len(y)} images\n")
    print("per-class accuracy:")
    for name, a in per_class.items():
        print(f"  {name:<12} {100 * a:6.2f}%")
    w = max(len(n) for n in classes)
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    print(" " * (w + 1) + " ".join(f"{n[:5]:>5}" for n in classes))
    for i, name in enumerate(classes):
        print(f"{name:>{w}} " + " ".join(f"{v:>5}" for v in cm[i]))
    if args.json:
        atomic_write_text(args.json, json.dumps({"accuracy": acc, "per_class": per_class, "confusion": cm.tolist(),
                                                 "classes": classes}, indent=1) + "\n")
    return 0



CHECKPOINT_SUFFIXES = (".npz", ".safetensors")


def predict_main(argv=None, prog=None):
    """Classify image files with a trained checkpoint: the top-5 classes of each and their probabilities."""
    p = argparse.ArgumentParser(prog=prog, description=predict_main.__doc__)
    p.add_argument("paths", nargs="+", metavar="[CHECKPOINT] IMAGE [IMAGE ...]",
                   help="a .npz written by scripts/train.py or a .safetensors (without it: the weights that ship "
                        "with npvit), then one or more image files (png, jpg, ...), each resized to the model's "
                        "image size")
    p.add_argument("-k", type=positive_int, default=5, help="how many classes to show (all, if fewer)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    first_is_checkpoint = args.paths[0].lower().endswith(CHECKPOINT_SUFFIXES)
    args.checkpoint, images = (args.paths[0], args.paths[1:]) if first_is_checkpoint else (None, args.paths)
    if not images:
        p.error(f"no image given after the checkpoint {args.checkpoint}")
    checkpoints = [x for x in images if x.lower().endswith(CHECKPOINT_SUFFIXES)]
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


def attention_main(argv=None, prog=None):
    """Attention maps of a trained checkpoint over test images, overlaid on each image: for a model that
classifies from [CLS] (the article's), that token's attention to each patch averaged over layers and heads
(the article's figure) and its attention rollout; for one that classifies from the mean of the patch tokens,
the attention each patch receives from them, and their rollout."""
    p = argparse.ArgumentParser(prog=prog, description=attention_main.__doc__)
    p.add_argument("checkpoint", nargs="?", help="a .npz written by scripts/train.py, or a .safetensors (default: "
                   "the weights that ship with npvit)")
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



def plot_main(argv=None, prog=None):
    """Training curves (loss and accuracy, train and test) from a run's metrics.jsonl, as a PNG."""
    p = argparse.ArgumentParser(prog=prog, description=plot_main.__doc__)
    p.add_argument("metrics", help="metrics.jsonl, or the run's out dir")
    p.add_argument("-o", "--out", help="picture to write (default: curves.png beside the metrics; .png, .pdf, .svg)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    path = os.path.join(args.metrics, "metrics.jsonl") if os.path.isdir(args.metrics) else args.metrics
    if not os.path.isfile(path):
        raise UserError(f"no metrics file at {path}")
    out = args.out or os.path.join(os.path.dirname(path), "curves.png")
    check_image_path(out)
    check_writable(out)
    metrics = read_metrics(path)
    if not metrics:
        raise UserError(f"{path} holds no epochs yet")
    plot_curves(metrics, out, args.title)
    print(f"wrote {out}")
    return 0



def export_main(argv=None, prog=None):
    """Export a checkpoint's weights to .safetensors under the article's PyTorch names, for
``safetensors.torch.load_file`` and the article's ``ViTForClassfication.load_state_dict``."""
    p = argparse.ArgumentParser(prog=prog, description=export_main.__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py")
    p.add_argument("out", help="the .safetensors file to write")
    p.add_argument("--dtype", choices=["float32", "float64"], help="cast the weights (default: as saved)")
    add_foreign_args(p)
    args = p.parse_args(argv)
    if not args.out.endswith(".safetensors"):
        raise UserError(f"{args.out}: the output must end in .safetensors")
    check_writable(args.out)
    export_safetensors(args.checkpoint, args.out, dtype=args.dtype, config=model_config_from(vars(args), args.config))
    print(f"wrote {args.out}")
    return 0

