"""npvit's command line: ``npvit <program>`` (also ``python -m npvit``) and ``scripts/<program>.py``.

One module per program, each with ``main(argv=None, prog=...)`` that parses its flags and does its work;
npvit/cli/runner.py starts and ends them all the same way (error lines, exit status 2, quiet pipes)
and holds the flags they share. Nothing outside npvit/cli/ parses flags: the library below takes
plain values.
"""
from __future__ import annotations

import importlib
import sys

from .runner import USAGE_ERROR, run_main

PROGRAMS = {
    "train": "train a ViT (the article's or your own config) on CIFAR-10 or an image folder",
    "evaluate": "test accuracy, per-class accuracy and confusion matrix",
    "predict": "the top classes of one or more images",
    "plot": "training curves from a run's metrics.jsonl",
    "attention": "attention maps ([CLS] and rollout) over test images",
    "export": "a checkpoint's weights as .safetensors for PyTorch",
    "gradcheck": "numerical gradient checks of every layer and the whole model",
}


def program(name):
    """The ``main`` of program ``name`` (npvit/cli/<name>.py)."""
    return importlib.import_module(f"{__name__}.{name}").main


def run(name, argv=None, **kw) -> int:
    """Run program ``name`` as ``npvit <name>`` and ``scripts/<name>.py`` do: its exit status. ``kw`` go to
    its ``main`` (``prog``, and ``callbacks`` for train)."""
    return run_main(lambda a: program(name)(a, **kw), argv)


def usage():
    width = max(map(len, PROGRAMS))
    return ("usage: npvit <command> [options]   (npvit <command> --help for its options)\n\ncommands:\n"
            + "\n".join(f"  {name:<{width}}  {text}" for name, text in PROGRAMS.items()))


def entry(argv=None) -> int:
    """``npvit <command> ...``: the console entry point (and ``python -m npvit``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(_dispatch, argv)


def _dispatch(argv):
    if not argv:
        print(usage(), file=sys.stderr)
        return USAGE_ERROR
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in PROGRAMS:
        print(f"{usage()}\n\nerror: unknown command {name!r}", file=sys.stderr)
        return USAGE_ERROR
    return program(name)(rest, prog=f"npvit {name}")
