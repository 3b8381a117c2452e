"""``scripts/train.py`` and ``npvit train``: the command line of training.

Flags come from the fields of the settings record (npvit/training/settings.py); settings come from defaults < --recipe <
--config FILE < flags, or, with --resume, from the resumed run's own settings with the flags on
top. The run itself is npvit/training/run.py.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..training.console import Console, StopRequest
from ..distributed import get_world
from ..errors import Diverged, PeerLost, ReplicasDiffer, StartFailed, UserError, error_line
from ..training.settings import ALL_KEYS, OPTIONS, RECIPES, TRAIN_DEFAULTS, build_config, default_text
from ..training.runstate import read_resume, resume_source
from ..training.run import train
from .runner import SafeStream, add_model_args, flag, threads_arg


def make_parser(prog="scripts/train.py"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train the article's Vision Transformer with npvit's hand-written backward passes. "
                    "Settings: defaults < --recipe < --config FILE < flags.",
        epilog="Model keys (the article's config) can be set with the flags above or in the --config JSON, e.g. "
               '{"hidden_size": 64, "epochs": 20}. A run directory holds one run: Ctrl-C saves a checkpoint and '
               "--resume OUT_DIR continues it.")
    p.add_argument("--recipe", choices=list(RECIPES), default=argparse.SUPPRESS,
                   help=f"{OPTIONS['recipe'].help} (default: {TRAIN_DEFAULTS['recipe']})")
    p.add_argument("--config", metavar="FILE", help="JSON file of config keys (model and training)")
    p.add_argument("--resume", metavar="PATH", help="continue the run in this directory (or from this checkpoint "
                   "file), with its own settings unless flags change them; it continues in that directory, "
                   "or branches into --out-dir if given (which must be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out-dir (its "
                   "checkpoints, metrics, config and curves are deleted)")
    t = p.add_argument_group("training")
    for key, o in OPTIONS.items():
        if key == "recipe":
            continue
        kw = dict(dest=key, default=argparse.SUPPRESS, help=f"{o.help} ({default_text(key)})")
        if o.kind == "bool":
            t.add_argument(flag(key), action=argparse.BooleanOptionalAction, **kw)
        elif o.kind in ("betas", "scale"):
            t.add_argument(flag(key), nargs=2, type=float, metavar=("A", "B"), **kw)
        elif o.kind == "choice":
            t.add_argument(flag(key), choices=list(o.choices), **kw)
        elif o.kind == "threads":
            t.add_argument(flag(key), type=threads_arg, metavar="N|auto", **kw)
        elif o.kind.startswith("int") or o.kind == "seed":
            t.add_argument(flag(key), type=int, metavar="N", **kw)
        elif o.kind.startswith("float") or o.kind in ("fraction", "fraction|none", "probability"):
            t.add_argument(flag(key), type=float, metavar="X", **kw)
        else:
            t.add_argument(flag(key), metavar="PATH", **kw)
    add_model_args(p, note=default_text)
    return p


def config_from_args(args, world=None):
    """The run's Settings from the parsed flags: a fresh run's, or a resumed run's own settings with the flags
    on top (its directory as out_dir unless --out-dir branches it elsewhere). Returns (settings, the Resume
    record of the checkpoint, read here once, or None). In an MPI run rank 0 alone reads the checkpoint, on its
    host, and sends it to the others: their hosts need neither the run directory nor the checkpoint."""
    config_file, resume = args.pop("config"), args.pop("resume")
    if not resume:
        return build_config(file=config_file, overrides=args), None
    source_dir, record = read_on_rank_0(world or get_world(), resume)
    overrides = {**args, "out_dir": args.get("out_dir", source_dir)}
    if config_file is not None:
        return build_config(file=config_file, overrides=overrides), record
    saved = {k: v for k, v in record.checkpoint.meta["train_config"].items() if k in ALL_KEYS and k != "out_dir"}
    return build_config(overrides={**saved, **overrides}), record


def read_on_rank_0(world, resume):
    """(the run directory, the Resume record) of ``resume``, read by rank 0 and broadcast; a failure to read it
    stops every rank (rank 0 says why)."""
    got, failure = None, None
    if world.rank == 0:
        try:
            got = (resume_source(resume)[1], read_resume(resume))
        except (UserError, OSError) as e:
            if world.size == 1:
                raise
            failure = error_line(e)
    got, failure = world.broadcast((got, failure))
    if failure is not None:
        raise StartFailed([failure] + [None] * (world.size - 1))
    return got


def report_start_failed(e, world, err):
    """Rank 0 says what went wrong where, each message once; status 2."""
    if world.rank == 0:
        by_message = {}
        for rank, message in enumerate(e.messages):
            if message is not None:
                by_message.setdefault(message, []).append(rank)
        for message, ranks in by_message.items():
            where = "every process" if len(ranks) == world.size else "process " + ", ".join(map(str, ranks))
            print(f"{message} ({where} of {world.size})", file=err)
    return 2


def main(argv=None, prog="scripts/train.py", callbacks=()):
    """``scripts/train.py`` and ``npvit train``: 0 when done (or stopped and saved), 1 if training diverged
    or the output was closed, 2 for a usage error."""
    args = vars(make_parser(prog).parse_args(argv))
    overwrite = args.pop("overwrite")
    stop = StopRequest()
    out = SafeStream(sys.stdout, on_broken=lambda: stop.request("output closed"))
    err = SafeStream(sys.stderr, on_broken=lambda: stop.request("output closed"))
    world = get_world()
    console = Console(log=lambda msg: print(msg, file=out), err=err, speaks=world.rank == 0)
    try:
        settings, resume = config_from_args(args, world)    # the same flags on every rank: the same errors
    except StartFailed as e:
        return report_start_failed(e, world, err)
    try:
        train(settings, resume, overwrite, console=console, callbacks=callbacks, stop=stop, world=world)
    except PeerLost as e:                   # each surviving process says so and ends: MPI cannot finish cleanly
        print(f"error: {e}", file=err)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except Diverged as e:                   # every rank diverges at the same step: their totals are the same
        if world.rank == 0:
            print(f"error: {e}", file=err)
        return 1
    except ReplicasDiffer as e:             # every rank found it at the same point: rank 0 says it once
        if world.rank == 0:
            print(error_line(e), file=err)
        return 2
    except StartFailed as e:
        return report_start_failed(e, world, err)
    except BaseException as e:              # one rank failed: end them all rather than leave them waiting
        if world.size > 1:
            print(f"rank {world.rank}: " + (error_line(e) if isinstance(e, (UserError, OSError)) else
                                            f"error: {type(e).__name__}: {e}"), file=sys.stderr)
            world.abort(2 if isinstance(e, (UserError, OSError)) else 1)
        raise
    return 1 if out.broken or err.broken else 0
