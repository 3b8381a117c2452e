"""How npvit's command-line programs start and end, and ``npvit <command>``, which runs them.

``npvit train | evaluate | predict | plot | attention | export | gradcheck`` (also
``python -m npvit ...``); ``scripts/*.py`` run the same functions.

``run_main(main, argv)`` runs a program's ``main`` so that
- a :class:`npvit.errors.UserError` (and a missing or unreadable file the user named, or an
  optional package that is not installed) prints ``error: <message>`` and exits with status 2,
  never a traceback;
- a closed pipe (``... | head``) ends the program quietly;
- stdout is line-buffered, so a log redirected to a file fills as the program runs.
"""
from __future__ import annotations

import os
import sys

from .errors import UserError

USAGE_ERROR = 2


def error_line(e) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:      # as the operating system said it
        return f"error: {e.strerror.lower()}: {e.filename}"
    return f"error: {e}"


def run_main(main, argv=None) -> int:
    """Run ``main(argv)`` as a program: its status, 2 for a usage error, 1 after a broken pipe."""
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):   # pragma: no cover - a replaced stdout
        pass
    try:
        return main(argv)
    except (UserError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(error_line(e), file=sys.stderr)
        return USAGE_ERROR
    except ImportError as e:       # an optional package this run needs; npvit's messages say what to install
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:
        quiet_stdout()
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def quiet_stdout(stream=None):
    """After the reader of stdout (or ``stream``) went away: send the rest, and Python's final flush,
    to devnull."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, (stream or sys.stdout).fileno())
    except (OSError, ValueError):   # pragma: no cover - stdout without a file descriptor
        pass
    finally:
        os.close(devnull)


def positive_int(text):
    """argparse type: an integer >= 1."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


class SafeStream:
    """A text stream (stdout or stderr) that survives its reader going away: after a broken pipe it
    drops what is written and calls ``on_broken`` once (training uses it to save and stop)."""

    def __init__(self, stream, on_broken=None):
        self.stream, self.on_broken, self.broken = stream, on_broken, False

    def write(self, text):
        if self.broken:
            return len(text)
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):   # ValueError: the stream was closed
            self._broke()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self._broke()

    def _broke(self):
        self.broken = True
        quiet_stdout(self.stream)
        if self.on_broken is not None:
            self.on_broken()

    def isatty(self):
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False


COMMANDS = {
    "train": ("npvit.train_cli", "train_main", "train a ViT (the article's or your own config) on CIFAR-10 or an image folder"),
    "evaluate": ("npvit.commands", "evaluate_main", "test accuracy, per-class accuracy and confusion matrix"),
    "predict": ("npvit.commands", "predict_main", "the top classes of one image"),
    "plot": ("npvit.commands", "plot_main", "training curves from a run's metrics.jsonl"),
    "attention": ("npvit.commands", "attention_main", "attention maps ([CLS] and rollout) over test images"),
    "export": ("npvit.commands", "export_main", "a checkpoint's weights as .safetensors for PyTorch"),
    "gradcheck": ("npvit.gradcheck", "main", "numerical gradient checks of every layer and the whole model"),
}


def usage():
    width = max(map(len, COMMANDS))
    return ("usage: npvit <command> [options]   (npvit <command> --help for its options)\n\ncommands:\n"
            + "\n".join(f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()))


def entry(argv=None) -> int:
    """``npvit <command> ...``: the console entry point (and ``python -m npvit``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_main(_dispatch, argv)


def _dispatch(argv):
    import importlib

    if not argv:
        print(usage(), file=sys.stderr)
        return USAGE_ERROR
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{usage()}\n\nerror: unknown command {name!r}", file=sys.stderr)
        return USAGE_ERROR
    module, func, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), func)(rest, prog=f"npvit {name}")
