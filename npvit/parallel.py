"""Data parallelism over CPU threads: ``ViT(config, threads=T)``.

Why: NumPy runs every elementwise operation and reduction (exp, tanh, the row
sums of softmax and LayerNorm) on one core, and the idle OpenBLAS threads
busy-wait after each GEMM, starving any other thread that would help. So with
T threads npvit splits the batch into T shards and runs each shard through its
own replica of the model on its own thread, with BLAS held to one thread per
call. NumPy releases the GIL inside every large array operation, so the shards
run truly in parallel: the split PyTorch's DataParallel makes across GPUs, made
here across cores. The layers stay the plain single-threaded code.

    x (B, ...) -> shards x[s_0], ..., x[s_{T-1}]     (batch rows split as evenly as possible)
    replica t:   logits[s_t] = forward(x[s_t]);   later  dx[s_t] = backward(dlogits[s_t])
    gradients:   g = sum_t g_t                     (each g_t is the gradient of shard t's rows)

Every layer maps batch rows independently, and the loss's dlogits already carries
the 1/B of the mean over the whole batch, so the sum is the full-batch gradient
(up to float rounding, the order of the additions differs).

Replicas share the model's parameter arrays (the same dicts, so optimiser
updates and ``load_state_dict`` reach them) and own their gradients and caches.
They are built on first use and rebuilt after ``astype``/``to``.
"""
from __future__ import annotations

import os
from argparse import ArgumentTypeError
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .backend import seed_for
from .layers.dropout import Dropout


def default_threads() -> int:
    """The number of CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_threads(threads, backend) -> int:
    """Validate ``threads`` (an int >= 1, or "auto" for default_threads() on NumPy)."""
    if isinstance(threads, str) and threads == "auto":
        return default_threads() if backend == "numpy" else 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    if threads > 1 and backend != "numpy":
        raise ValueError(f"threads={threads} splits the batch over CPU cores; it applies to the numpy "
                         f"backend only, not {backend!r} (use threads=1)")
    return int(threads)


def threads_arg(text):
    """argparse type for --threads: a positive integer or "auto"."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def blas_controller():
    """threadpoolctl's handle on the loaded BLAS libraries (the one well-kept way to set their threads)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        raise ImportError("threads > 1 needs threadpoolctl to hold BLAS to one thread per shard: "
                          "pip install threadpoolctl (it is in npvit's [train] and [test] extras)") from None
    return ThreadpoolController()


class DataParallel:
    """Runs ``model``'s forward and backward as T shards of the batch on T threads."""

    def __init__(self, model, threads):
        self.model, self.threads = model, threads
        self.blas = blas_controller()
        self.pool = None            # T - 1 worker threads; the calling thread runs shard 0
        self.replicas = None        # T copies of the model sharing its parameters, built on first use
        self.shards = None          # the row slices of the last forward

    def __deepcopy__(self, memo):
        # A deep copy of the model gets its own threads and replicas (built when it first runs).
        return DataParallel(memo[id(self.model)], self.threads)

    def reset(self):
        """Forget the replicas (after the model's arrays were replaced by astype/to)."""
        self.replicas = None

    def get_replicas(self):
        if self.replicas is None:
            self.replicas = [self.model.replicate() for _ in range(self.threads)]
            for t, replica in enumerate(self.replicas):
                replica.parallel = None
                for _, layer in replica.named_layers():
                    if isinstance(layer, Dropout):      # distinct masks per shard
                        layer.seed, layer.rng = seed_for(layer.seed, t), None
        return self.replicas

    def run(self, calls):
        """Run the zero-argument callables in parallel (the first on this thread); their results in order."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="npvit")
        errstate = np.geterr()      # NumPy's floating-point error handling is per thread: shards follow the caller's

        def in_callers_errstate(call):
            with np.errstate(**errstate):
                return call()

        with self.blas.limit(limits=1, user_api="blas"):
            futures = [self.pool.submit(in_callers_errstate, call) for call in calls[1:]]
            try:
                first = calls[0]()
            finally:
                wait(futures)            # an error in shard 0 never leaves other shards running behind it
            return [first] + [f.result() for f in futures]   # re-raises a shard's error here

    def forward(self, x, return_attention=False):
        """x (B, C, H, W) -> logits (B, K) [, L maps (B, H, N, N)], shard by shard."""
        replicas = self.get_replicas()
        for replica in replicas:     # follow the model's train/eval mode, layer by layer
            for (_, mine), (_, theirs) in zip(self.model.named_layers(), replica.named_layers()):
                theirs.training = mine.training
        bounds = np.linspace(0, len(x), min(self.threads, len(x)) + 1).astype(int)
        self.shards = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        outs = self.run([lambda r=r, s=s: r.forward(x[s], return_attention)
                         for r, s in zip(replicas, self.shards)])
        xp = self.model.xp
        if not return_attention:
            return xp.concatenate(outs)
        logits = xp.concatenate([o[0] for o in outs])
        atts = [xp.concatenate(maps) for maps in zip(*(o[1] for o in outs))]
        return logits, atts

    def backward(self, dlogits):
        """dlogits (B, K) -> dx (B, C, H, W); the shards' gradients are added into the model's."""
        outs = self.run([lambda r=r, s=s: r.backward(dlogits[s]) for r, s in zip(self.replicas, self.shards)])
        grads = self.model.gradients()
        for replica in self.replicas:
            for name, g in replica.gradients().items():
                grads[name] += g                     # g = sum over shards of g_t
                g.fill(0)
        return self.model.xp.concatenate(outs)
