"""Test accuracy, per-class accuracy and confusion matrix of a trained checkpoint (``npvit evaluate``)."""
import argparse
import json
import sys

from ..data import load_dataset
from ..inference import check_labels, confusion_matrix, predict_proba
from ..parallel import one_blas_thread, threads_warning
from ..runfiles import atomic_write_text, check_writable
from .runner import add_foreign_args, positive_int, threads_arg, trained


def main(argv=None, prog=None):
    """Test accuracy, per-class accuracy and confusion matrix of a trained checkpoint."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
    p.add_argument("checkpoint", help="a .npz written by scripts/train.py (e.g. runs/vit/best.npz), a "
                   ".safetensors exported from one, or a transformers model directory (save_pretrained's)")
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
