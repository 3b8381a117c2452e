"""What a training run shows and hears on its terminal: lines, the progress of an epoch, and stop requests.

    Console     where lines go (stdout) and where notes go (stderr); on MPI runs rank 0 alone speaks
    Progress    one epoch's progress: a tqdm bar on a terminal, a plain line every 30 s in a log file
    StopRequest Ctrl-C, SIGTERM or a closed output: finish the step, save, exit (a second Ctrl-C aborts)
    start_line, epoch_line   the line a run starts with, and the line after each epoch
"""
from __future__ import annotations

import os
import signal
import sys
import time

PLAIN_PROGRESS_S = 30   # seconds between progress lines when stderr is not a terminal


class Console:
    """``Console(log, err, speaks)``: ``log(text)`` prints a line of the run's story (stdout); ``err`` is
    the stream for notes and progress (stderr); a rank that does not speak (MPI ranks but 0) prints nothing."""

    def __init__(self, log=print, err=None, speaks=True):
        self.speaks = speaks
        self.log = log if speaks else (lambda *a: None)
        self.err = (err or sys.stderr) if speaks else open(os.devnull, "w")

    def note(self, text):
        """A line on stderr: a warning or a remark beside the run's story."""
        print(text, file=self.err)


class Progress:
    """One epoch's progress: a tqdm bar on a terminal; elsewhere (a log file) a plain line every
    PLAIN_PROGRESS_S seconds; nothing with --no-progress."""

    def __init__(self, show, steps, start, epoch, epochs, stream):
        self.steps, self.stream = steps, stream
        self.bar, self.plain = None, False
        if show and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                            dynamic_ncols=True, leave=False, file=stream)
        elif show:
            self.plain, self.last = True, time.monotonic()
        self.desc = f"epoch {epoch + 1}/{epochs}"

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def show(self, i, loss, acc, ips, lr):
        """At a log point: the running loss and accuracy after ``i`` steps of the epoch."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", ips=f"{ips:.0f}", lr=f"{lr:.2e}",
                                 refresh=False)
        elif self.plain and time.monotonic() - self.last >= PLAIN_PROGRESS_S:
            self.last = time.monotonic()
            print(f"{self.desc} step {i}/{self.steps} | loss {loss:.4f} acc {acc:.3f} | {ips:.0f} img/s | "
                  f"lr {lr:.2e}", file=self.stream)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# The signals that ask a run to save and stop (SIGHUP where the system has it: not on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopRequest:
    """Stop at the next step boundary, save, exit: asked by the first Ctrl-C (SIGINT), SIGTERM, SIGHUP (the
    terminal closed), or the reader of the output going away. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.reason = None
        self.note = None           # where to say that we are stopping (stderr)

    def __enter__(self):
        self.old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in self.old:
            signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
        print("\nstopping: finishing this step and saving a checkpoint (Ctrl-C again to abort)",
              file=self.note or sys.stderr)

    def request(self, reason):
        self.requested, self.reason = True, reason

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def start_line(settings, net, train_images, eval_images, steps, world_size, out_dir):
    """The line a run starts with (``settings``: the run's Settings): the model, the data, the steps, and where
    it writes."""
    from ..ops import kernels_name

    s = settings
    split = "held-out (val)" if s.val_split else "test"
    n = getattr(net, "threads", 1)
    threads = f", {n} thread{'s' if n != 1 else ''}" if s.backend == "numpy" else ""
    processes = f", {world_size} processes" if world_size > 1 else ""
    return (f"npvit: {net.num_parameters():,} parameters, {train_images} train / {eval_images} {split} images, "
            f"{steps} steps of {s.batch_size} per epoch, recipe {s.recipe}, {s.backend} "
            f"{s.dtype}, kernels {kernels_name(net.kernels)}{threads}{processes}; writing to {out_dir}")


def epoch_line(r, epochs):
    """The line printed after epoch record ``r`` (one entry of metrics.jsonl)."""
    split = "val" if "val_acc" in r else "test"
    test = f" | {split} loss {r[split + '_loss']:.4f} acc {r[split + '_acc']:.4f}" if split + "_acc" in r else ""
    return (f"epoch {r['epoch']:>3}/{epochs} | train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}{test} | "
            f"lr {r['lr']:.2e} | {r['seconds']:.1f}s {r['images_per_s']:.0f} img/s")
