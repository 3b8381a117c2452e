"""How npvit's programs start and end, and the flags several of them share.

``run_main(main, argv)`` runs a program's ``main`` so that
- a :class:`npvit.errors.UserError` (and a missing or unreadable file the user named, or an
  optional package that is not installed) prints ``error: <message>`` and exits with status 2,
  never a traceback;
- a closed pipe (``... | head``) ends the program quietly;
- stdout is line-buffered, so a log redirected to a file fills as the program runs.

The flag types (:func:`positive_int`, :func:`threads_arg`), the flag spelling of a settings key
(:func:`flag`), the model's flags (:func:`add_model_args`) and the model a checkpoint flag names
(:func:`trained`) are here, once, for every program in npvit/cli/.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..config import ViTConfig
from ..errors import UserError, error_line
from ..inference import PRETRAINED, assumed_note, load_trained
from ..training.settings import model_config_from

USAGE_ERROR = 2


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


def flag(key) -> str:
    """The flag of a settings key: ``hidden_size`` -> ``--hidden-size``."""
    return "--" + key.replace("_", "-")


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def threads_arg(text):
    """argparse type for --threads: a positive integer or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def add_model_args(parser, note=None):
    """A flag for every model key (``--hidden-size``, ``--pooling``, ...) in its own argument group, each with
    its help, its choices and ``note(key)`` (the default to show); values land in ``args`` under the key."""
    group = parser.add_argument_group("model (the article's config keys)")
    for key, default in ViTConfig().to_dict().items():
        text, choices = ViTConfig.help()[key]
        kw = dict(dest=key, default=argparse.SUPPRESS, help=f"{text} ({note(key) if note else f'default: {default}'})")
        if isinstance(default, bool):
            group.add_argument(flag(key), action=argparse.BooleanOptionalAction, **kw)
        elif choices:
            group.add_argument(flag(key), choices=list(choices), **kw)
        else:
            group.add_argument(flag(key), type=type(default), metavar="X" if isinstance(default, float) else "N",
                               **kw)
    return group


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
