"""Data parallelism over CPU threads: ``DataParallel(model, threads=T)`` wraps a model.

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
updates and ``load_state_dict`` reach them) and own their gradients (one flat
buffer each, added into the model's with one add) and forward caches. The model
knows nothing of this: the wrapper is an execution strategy around it, as an MPI
or CUDA-graph runner would be.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from .backend import seed_for


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


def parallelize(model, threads):
    """``model`` run on ``threads`` (an int, or "auto": every core this process may use) CPU threads:
    wrapped in DataParallel when that is more than one, else the model itself."""
    n = check_threads(threads, getattr(model, "backend", "numpy"))
    return DataParallel(model, n) if n > 1 else model


def one_blas_thread(net):
    """A context for running ``net``: where it is a bare NumPy model (one thread, no DataParallel),
    BLAS is held to one thread, so that one thread means one core. Unheld, OpenBLAS starts a thread
    per core whose spin-waiting after every GEMM takes the other cores: two such processes (two runs,
    or two MPI ranks) on two cores each train several times slower. DataParallel holds
    BLAS to one thread per shard itself; a GPU model has nothing to hold."""
    if isinstance(net, DataParallel) or getattr(net, "backend", "numpy") != "numpy":
        return contextlib.nullcontext()
    return blas_controller().limit(limits=1, user_api="blas")


def threads_warning(threads):
    """A line to print when ``threads`` asks for more cores than this process may use, else None."""
    if isinstance(threads, int) and threads > default_threads():
        return (f"warning: --threads {threads} is more than the {default_threads()} cores this process may use; "
                f"the shards will compete for cores and run slower")
    return None


def blas_controller():
    """threadpoolctl's handle on the loaded BLAS libraries (the one well-kept way to set their threads)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        raise ImportError("threads > 1 needs threadpoolctl to hold BLAS to one thread per shard: "
                          "pip install threadpoolctl (it is in npvit's [train] and [test] extras)") from None
    return ThreadpoolController()


class DataParallel:
    """``DataParallel(model, threads)``: the model's forward and backward as T shards of the batch on
    T threads. Everything else (parameters, gradients, state_dict, config, ...) is the model's.

    Switch modes (``train``/``eval``) and seed dropout (``reseed``) through the wrapper, so every
    shard follows; cast or move the model (``astype``/``to``) before wrapping it.
    """

    def __init__(self, model, threads=2):
        if isinstance(threads, str) or isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) \
                or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        if getattr(model, "backend", "numpy") != "numpy":
            raise ValueError(f"DataParallel splits the batch over CPU cores; it applies to the numpy backend only, "
                             f"not {model.backend!r}")
        self.model, self.threads = model, int(threads)
        self.blas = blas_controller()
        self.pool = None            # T - 1 worker threads; the calling thread runs shard 0
        self.replicas = [model.replicate() for _ in range(self.threads)]   # share parameters, own gradients
        self.shards = None          # the row slices of the last forward
        self.reseed(0)

    def __getattr__(self, name):
        # Only called for what the wrapper does not define: the model's own attributes and methods.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __deepcopy__(self, memo):
        import copy

        return DataParallel(copy.deepcopy(self.model, memo), self.threads)

    def __call__(self, x, **kwargs):
        return self.forward(x, **kwargs)

    def astype(self, dtype):
        raise RuntimeError("cast the model before wrapping it in DataParallel (the shards share its arrays)")

    def to(self, xp):
        raise RuntimeError("move the model before wrapping it in DataParallel (the shards share its arrays)")

    def train(self, mode=True):
        for m in [self.model] + self.replicas:
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def set_patch_dropout(self, p):
        """The model's patch-dropout rate, on every shard."""
        for m in [self.model] + self.replicas:
            m.set_patch_dropout(p)
        return self

    def reseed(self, seed):
        """Dropout streams from (seed, shard): each shard draws its own masks, repeatably."""
        self.model.reseed(seed)
        for t, replica in enumerate(self.replicas):
            replica.reseed(seed_for(seed, t))
        return self

    def run(self, calls):
        """Run the zero-argument callables in parallel (the first on this thread); their results in order."""
        if len(calls) == 1:
            return [calls[0]()]
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
        self.model.check_input(x)
        bounds = np.linspace(0, len(x), min(self.threads, len(x)) + 1).astype(int)
        self.shards = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        outs = self.run([lambda r=r, s=s: r.forward(x[s], return_attention)
                         for r, s in zip(self.replicas, self.shards)])
        xp = self.model.xp
        if not return_attention:
            return xp.concatenate(outs)
        logits = xp.concatenate([o[0] for o in outs])
        atts = [xp.concatenate(maps) for maps in zip(*(o[1] for o in outs))]
        return logits, atts

    def backward(self, dlogits, input_grad=True):
        """dlogits (B, K) -> dx (B, C, H, W) (None without ``input_grad``); the shards' gradients are added into
        the model's."""
        if self.shards is None:
            raise RuntimeError("backward called before forward")
        B = self.shards[-1].stop
        if dlogits.shape[0] != B:
            raise ValueError(f"dlogits must have the logits' shape ({B}, ...), got {dlogits.shape}")
        outs = self.run([lambda r=r, s=s: r.backward(dlogits[s], input_grad) for r, s in zip(self.replicas, self.shards)])
        for replica in self.replicas:                # g = sum over shards of g_t: one add per shard
            self.model.flat.grads += replica.flat.grads
            replica.flat.grads.fill(0)
        return self.model.xp.concatenate(outs) if input_grad else None
