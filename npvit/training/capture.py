"""A training step recorded once as a CUDA graph and replayed (``--cuda-graph``, CuPy).

On a GPU, a step of this small model is bound by launching its few hundred kernels, not by their arithmetic. A CUDA
graph records the launches of one step once (a stream capture) and replays them all with one launch. A replay runs no
Python: the kernels run again with the arguments they were recorded with, reading and writing the same device memory.
So each step is split in two, and everything the host decides is done before the replay, written into device memory
that the graph reads:

    the host, before each replay                     the device, in the graph
    the batch copied into static input buffers       forward, loss, backward, clip   (step.gradients)
    the optimiser's count, learning rate and bias    the AdamW update                 (Optimizer.apply_step)
      corrections, into 0-d device arrays            (Optimizer.begin_step)
    the moving average's 1 - d_t                     the moving average               (EMA.apply_update)
      (EMA.begin_update)
    each dropout stream's key, from (seed, epoch,    dropout, drop path and patch dropout masks drawn from
      step) (ViT.start_random_streams)               counters in device memory (npvit/ops/cuda_random.py)

and the GEMMs are our own kernels, since CuPy refuses cuBLAS during a capture (the ``capturable`` kernel set).

The memory a step allocates comes, during its capture, from a memory pool of the graph's own (as PyTorch's graphs
have): the addresses the graph writes are never handed to anything else. Before a shape is captured, its first
``warmup`` steps run eagerly in that pool, so that the capture finds every block it needs already there, and the
kernels compiled. Each batch shape and set of drop rates gets a graph of its own (the last, smaller batch of an epoch one; a
patch-dropout rate that changes each epoch, which changes the number of tokens, one per epoch). A captured step gives the same numbers as the eager one given the same draws:
tests/training/test_capture.py holds 10 steps to that on the CPU, with a stand-in for the graph that replays the step
against the host's state as it was at the capture (``Emulated``), and the kernels under Numba's CUDA simulator.
"""
from __future__ import annotations

import contextlib
import copy

from .step import gradients


class CudaGraphs:
    """Capture and replay on CuPy: a stream and a memory pool of the graphs' own. The rest of the run (augmentation,
    the running totals, evaluation) stays on CuPy's current stream; events order the two both ways."""

    def __init__(self, xp):
        self.xp = xp
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.pool = xp.cuda.MemoryPool()

    @contextlib.contextmanager
    def running(self):
        """Eager work on the graphs' stream and pool, after what the current stream has queued, and before what
        it queues next."""
        cuda = self.xp.cuda
        current = cuda.get_current_stream()
        self.stream.wait_event(current.record())
        try:
            with self.stream, cuda.using_allocator(self.pool.malloc):
                yield
        finally:
            current.wait_event(self.stream.record())

    def capture(self, fn, host_state):
        """Record ``fn()``: its kernels are recorded, not run. The graph, with what fn returned (arrays that each
        replay writes)."""
        with self.running():
            self.stream.begin_capture()
            try:
                out = fn()
            finally:
                graph = self.stream.end_capture()
        return graph, out

    def launch(self, captured):
        """Replay a captured step; what its fn returned, now holding this replay's values."""
        graph, out = captured
        cuda = self.xp.cuda
        current = cuda.get_current_stream()
        self.stream.wait_event(current.record())
        graph.launch(self.stream)
        current.wait_event(self.stream.record())
        return out


class Emulated:
    """A stand-in for CUDA graphs where there is no GPU (the tests): a "replay" calls the step's device part again,
    with the host's state (``host_state``: the attributes the host part sets before each step) put back as it was
    at the capture, as a real graph would have it baked into its arguments. A device part that read any of it, a
    Python float of the learning rate, the step count or a dropout seed, would repeat the captured step's value
    and differ from the eager step."""

    def __init__(self, xp):
        self.xp = xp

    @contextlib.contextmanager
    def running(self):
        yield

    def capture(self, fn, host_state):
        return fn, [(obj, name, _frozen(getattr(obj, name))) for obj, name in host_state]

    def launch(self, captured):
        fn, frozen = captured
        now = [(obj, name, getattr(obj, name)) for obj, name, _ in frozen]
        try:
            for obj, name, value in frozen:
                setattr(obj, name, _frozen(value))
            return fn()
        finally:
            for obj, name, value in now:
                setattr(obj, name, value)


def _frozen(value):
    """A copy of a host value that later assignments into it leave alone (a list of dicts, a dict, or a scalar)."""
    if isinstance(value, list):
        return [_frozen(v) for v in value]
    if isinstance(value, dict):
        return dict(value)
    return copy.copy(value)


class CapturedStep:
    """``step = CapturedStep(model, opt, ema, rule, graphs)``; ``loss, correct = step(x, target, labels, seed)``: one
    training step (``train_step`` and the moving average's update), its dropouts keyed by ``seed``, captured per
    batch shape after ``warmup`` eager steps and replayed from then on. ``graphs``: CudaGraphs (CuPy) or Emulated.
    The model must draw its dropouts on the device (``ViT.draw_on_device``), and be one process's whole model (the
    MPI all-reduce and the CPU shards are not in a graph)."""

    def __init__(self, model, opt, ema, rule, graphs, warmup=2):
        random_layers = [layer for _, layer in model.named_layers() if hasattr(layer, "device_random")]
        if any(layer.device_random is None for layer in random_layers):
            raise ValueError("a captured step draws its dropout masks from counters on the device: call "
                             "model.draw_on_device() first")
        self.model, self.opt, self.ema, self.rule, self.graphs = model, opt, ema, rule, graphs
        self.random_layers = random_layers
        self.warmup = warmup
        self.warm = {}              # shape -> eager steps done
        self.captured = {}          # shape -> (the graphs' handle of its capture, its static inputs)
        self.buffers = None         # the data pointers of the arrays the graphs read, checked at each replay
        self.host_state = [(opt, "step_count"), (opt, "_per_group"), (opt, "param_groups")] \
            + ([(ema, "updates")] if ema is not None else []) \
            + [(layer, name) for layer in random_layers for name in ("seed", "p")]

    def device_part(self, x, target, labels):
        """What the graph holds: gradients, the optimiser's kernels, the average's; reads only device memory."""
        r = self.rule
        loss, correct = gradients(self.model, x, target, labels, r.label_smoothing, r.grad_clip, r.micro_batch)
        self.opt.apply_step()
        if self.ema is not None:
            self.ema.apply_update()
        return loss, correct

    def host_part(self, seed):
        """What the host writes before each step: the dropout keys, the optimiser's and the average's scalars."""
        self.model.reseed(seed)
        self.model.start_random_streams()
        self.opt.begin_step()
        if self.ema is not None:
            self.ema.begin_update()

    def __call__(self, x, target, labels, seed):
        shape = (tuple(x.shape), tuple(target.shape), tuple(labels.shape),     # and the drop rates, which
                 tuple(layer.p for layer in self.random_layers))                 # set PatchDropout's tokens
        self.host_part(seed)
        if shape not in self.captured and self.warm.get(shape, 0) < self.warmup:
            self.warm[shape] = self.warm.get(shape, 0) + 1
            with self.graphs.running():
                return self.device_part(x, target, labels)
        if shape not in self.captured:
            static = tuple(a.copy() for a in (x, target, labels))        # the graph's inputs, refilled each step
            self.captured[shape] = (self.graphs.capture(lambda: self.device_part(*static), self.host_state), static)
            self.buffers = self.buffers or self.pointers()
        graph, static = self.captured[shape]
        if self.pointers() != self.buffers:
            raise RuntimeError("the arrays a captured training step reads (parameters, gradients, optimiser "
                               "state, the moving average, the random counters) were replaced since the capture; "
                               "make a new CapturedStep")
        for buffer, a in zip(static, (x, target, labels)):
            buffer[...] = a
        loss, correct = self.graphs.launch(graph)
        return loss.copy(), correct.copy()          # the next replay writes the same arrays

    def pointers(self):
        arrays = [self.model.flat.params, self.model.flat.grads, *self.opt.state.values(), *self.opt.scalars.values()]
        if self.ema is not None:
            arrays += [self.ema.average, self.ema.one_minus_d]
        arrays += [layer.device_random.state for _, layer in self.model.named_layers()
                   if getattr(layer, "device_random", None) is not None]
        return tuple(_address(a) for a in arrays)


def _address(a):
    interface = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return interface["data"][0]
