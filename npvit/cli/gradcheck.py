"""Gradient checks of every layer of a small ViT, every reference primitive and the whole model on every kernel
set that runs here (``npvit gradcheck``); the checking is npvit/gradcheck.py."""
import argparse

from ..checks import check_all


def main(argv=None, prog="npvit gradcheck"):
    parser = argparse.ArgumentParser(prog=prog, description="Gradient-check every layer of a small ViT, every "
                                     "reference primitive, and the whole model on every kernel set that runs here.")
    parser.add_argument("--tol", type=float, default=1e-6, help="largest relative error that passes (default 1e-6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    reports = check_all(args.seed)
    for report in reports:
        print(report, end="\n\n")
    bad = [r.title for r in reports if not r.passed(args.tol)]
    worst = max(r.worst for r in reports)
    print(f"{sum(len(r.rows) for r in reports)} arrays checked, worst relative error {worst:.2e} "
          f"(tolerance {args.tol:g}): {'FAILED ' + ', '.join(bad) if bad else 'all passed'}")
    return 1 if bad else 0
