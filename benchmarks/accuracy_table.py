"""The accuracy of finished (or running) training runs, as the Markdown table of docs/accuracy.md and
docs/experiments.md: per run its recipe and flags, seed, epochs, final and best accuracy, and the
epochs and minutes (training + evaluation, cumulative) it took to first reach each threshold;
then, per recipe, the seeds and the mean and spread of their final accuracies.

    python benchmarks/accuracy_table.py runs/article-s42 runs/sprint-s1 ...
    python benchmarks/accuracy_table.py runs/* --thresholds 0.70 0.755 --json results/accuracy.json
    python benchmarks/accuracy_table.py runs/a runs/b --plot docs/accuracy.png   # the curves, per epoch and minute
    python benchmarks/accuracy_table.py runs/new --include results/accuracy.json  # with earlier sessions' rows
    python benchmarks/accuracy_table.py runs/* --plot curves.png --plot-only 'fast80-s*'  # the table of all, some curves

A run evaluated on held-out training images (--val-split) is reported on those ("val"); the
others on the test set. Times are the run's own (metrics.jsonl's seconds and eval_seconds):
comparable only between runs that had the same cores to themselves.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from npvit.cli import run_main  # noqa: E402
from npvit.errors import UserError  # noqa: E402
from npvit.training.settings import RECIPES, Settings, build_config  # noqa: E402
from npvit.runfiles import read_metrics  # noqa: E402

# Settings that are not the recipe's own and do not change what is trained or measured.
NOT_RECIPE = {"seed", "data_dir", "out_dir", "download", "progress", "threads", "eval_batch_size", "save_every",
              "eval_every", "recipe", "backend", "check_replicas", "kernels", "cuda_graph", "peer_timeout"}


def run_name(row):
    """A row's name in the tables and the plot's legend: its run directory's own name."""
    return os.path.basename(os.path.normpath(row["run"]))


def flags(cfg):
    """The settings where the run differs from its recipe, as flags (--init torch --ema 0.999 ...)."""
    base = (build_config(recipe=cfg["recipe"]) if cfg.get("recipe") in RECIPES else Settings()).to_dict()
    out = []
    for key, value in cfg.items():
        if key in NOT_RECIPE or key not in base or base[key] == value:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + key.replace("_", "-"))
        else:
            out.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(out)


def summarise(run, thresholds):
    metrics_path, config_path = os.path.join(run, "metrics.jsonl"), os.path.join(run, "config.json")
    if not os.path.isfile(metrics_path) or not os.path.isfile(config_path):
        raise UserError(f"{run} is not a run directory (no metrics.jsonl and config.json)")
    with open(config_path, encoding="utf-8") as f:
        cfg = json.load(f)
    records = read_metrics(metrics_path)
    split = "val" if cfg.get("val_split") else "test"
    key = f"{split}_acc"
    clock, reached, accs, curve = 0.0, {}, [], []
    for r in records:
        clock += r.get("seconds", 0.0) + r.get("eval_seconds", 0.0)
        if r.get(key) is None:
            continue
        accs.append((r["epoch"], r[key]))
        curve.append((r["epoch"], clock / 60.0, r[key]))
        for t in thresholds:
            if t not in reached and r[key] >= t:
                reached[t] = (r["epoch"], clock / 60.0)
    if not accs:
        raise UserError(f"{run} has no evaluated epoch yet")
    best = max(accs, key=lambda a: a[1])
    return {"run": run, "recipe": cfg.get("recipe"), "flags": flags(cfg), "seed": cfg.get("seed"), "split": split,
            "backend": cfg.get("backend", "numpy"), "finished": records[-1]["epoch"] == cfg.get("epochs"),
            "epochs": f"{records[-1]['epoch']}/{cfg.get('epochs')}", "final": accs[-1][1], "best": best[1],
            "best_epoch": best[0], "minutes": clock / 60.0,
            "reached": {f"{t:g}": reached.get(t) for t in thresholds}, "curve": curve}


def markdown(rows, thresholds):
    head = ["run", "recipe", "flags", "seed", "epochs", "final", "best (epoch)", "minutes"]
    head += [f"{100 * t:g}%: epoch, min" for t in thresholds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [run_name(r), r["recipe"], f"`{r['flags']}`" if r["flags"] else "",
                 str(r["seed"]), r["epochs"], f"{r['split']} {100 * r['final']:.2f}%",
                 f"{100 * r['best']:.2f}% ({r['best_epoch']})", f"{r['minutes']:.0f}"]
        for t in thresholds:
            hit = r["reached"][f"{t:g}"]
            cells.append(f"{hit[0]}, {hit[1]:.0f}" if hit else "not reached")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread(rows):
    """Per recipe (recipe, its flags, the split it was measured on, and the backend: a seed rerun on a GPU
    is not another seed), the seeds and their final accuracies: mean, lowest and highest. Rows still
    running (epochs short of the recipe's) are left out, and so is a rerun of a seed already counted (on
    another machine or commit: the first row of each seed counts, a rerun is not another seed)."""
    groups = {}
    for r in rows:
        if r["finished"]:
            runs = groups.setdefault((r["recipe"], r["flags"], r["split"], r["backend"]), [])
            if r["seed"] not in {other["seed"] for other in runs}:
                runs.append(r)
    out = []
    for (recipe, flag, split, backend), runs in groups.items():
        finals = [r["final"] for r in runs]
        out.append({"recipe": recipe, "flags": flag, "split": split, "backend": backend,
                    "seeds": [r["seed"] for r in runs],
                    "mean": sum(finals) / len(finals), "low": min(finals), "high": max(finals)})
    return out


def spread_markdown(groups):
    head = ["recipe", "flags", "backend", "seeds", "final: mean", "lowest", "highest", "spread (points)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g["recipe"], f"`{g['flags']}`" if g["flags"] else "", g["backend"], " / ".join(map(str, g["seeds"])),
                 f"{g['split']} {100 * g['mean']:.2f}%", f"{100 * g['low']:.2f}%", f"{100 * g['high']:.2f}%",
                 f"{100 * (g['high'] - g['low']):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path):
    """Accuracy against epochs and against minutes, a line per run."""
    from npvit.visualize import _plt, check_image_path, save_figure

    plt = _plt()
    check_image_path(path)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    # A colour per run (tab10 repeats after 10, tab20 after 20); test curves solid, held-out ones dashed.
    colours = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for i, r in enumerate(rows):
        label = f"{run_name(r)} ({r['split']})"
        style = {"color": colours(i % colours.N), "ls": "-" if r["split"] == "test" else "--", "label": label}
        epochs, minutes, acc = zip(*r["curve"])
        a.plot(epochs, [100 * v for v in acc], **style)
        b.plot(minutes, [100 * v for v in acc], **style)
    for ax, x in ((a, "epoch"), (b, "minutes (training + evaluation)")):
        ax.set_xlabel(x), ax.set_ylabel("accuracy (%)"), ax.grid(alpha=0.3)
        for level in (75.5, 80.0):
            ax.axhline(level, color="grey", lw=0.8, ls=":")
    b.axvline(30, color="grey", lw=0.8, ls=":")     # the 30 minutes the sprint and fast80 aim within
    a.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def included(path, replaced):
    """The rows of the JSON at ``path`` (written by --json), but those of the runs named in ``replaced``."""
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)["runs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} holds no rows written by --json ({e})") from None
    return [r for r in rows if run_name(r) not in replaced]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run directories (each with metrics.jsonl and config.json)")
    p.add_argument("--include", metavar="FILE", help="rows of runs no longer at hand, from a JSON an earlier "
                   "--json wrote (a run given as a directory replaces its row of the same name)")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.70, 0.75, 0.755, 0.80],
                   help="accuracies (fractions) to time (default: 0.70 0.75 0.755 0.80)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--plot", metavar="PNG", help="also draw the runs' accuracy against epochs and minutes")
    p.add_argument("--plot-only", nargs="+", metavar="PATTERN", help="draw only the runs whose names match one of "
                   "these shell patterns (fast80-s* full-s4?), not every row of the table")
    args = p.parse_args(argv)
    rows = [summarise(run, args.thresholds) for run in args.runs]
    if args.include:
        rows = included(args.include, {run_name(r) for r in rows}) + rows
    if not rows:
        p.error("give run directories, or --include FILE")
    recipes = spread(rows)
    print(markdown(rows, args.thresholds))
    print()
    print(spread_markdown(recipes))
    if args.plot:
        drawn = [r for r in rows if not args.plot_only or any(
            fnmatch.fnmatchcase(run_name(r), pattern) for pattern in args.plot_only)]
        if not drawn:
            raise UserError(f"no run's name matches --plot-only {' '.join(args.plot_only)}")
        plot(drawn, args.plot)
    if args.json:
        from npvit.runfiles import atomic_write_text

        atomic_write_text(args.json, json.dumps({"runs": rows, "recipes": recipes}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
