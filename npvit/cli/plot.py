"""Training curves from a run's metrics.jsonl (``npvit plot``)."""
import argparse
import os

from ..errors import UserError
from ..runfiles import check_writable, read_metrics
from ..visualize import check_image_path, plot_curves


def main(argv=None, prog=None):
    """Training curves (loss and accuracy, train and test) from a run's metrics.jsonl, as a PNG."""
    p = argparse.ArgumentParser(prog=prog, description=main.__doc__)
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
