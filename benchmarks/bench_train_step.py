#!/usr/bin/env python
"""npvit vs PyTorch on the same ViT, side by side in one run.

For each model (article; large: D 192, 6 layers, 3 heads, MLP 384), patch size (4: 65 tokens;
2: 257 tokens) and batch size: milliseconds per training step (forward + loss + backward +
AdamW) and per inference batch, median of repeats after warm-up, both frameworks with the
same weights (state_dict interop) and the same thread count; peak extra memory of one
training step (RSS high-water mark in a fresh process on the CPU, the memory pools on the GPU).

    python benchmarks/bench_train_step.py                      # the full CPU table, 2 threads
    python benchmarks/bench_train_step.py --quick              # article model, batch 256, patch 4
    python benchmarks/bench_train_step.py --profile            # time per layer, forward and backward
    python benchmarks/bench_train_step.py --backend cupy       # against torch CUDA on a GPU

Writes the table to stdout and everything (machine, versions, threads) to JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)        # npvit and reference/ from this checkout (no NumPy loaded yet: see set_threads)

MODELS = {
    "article": dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192),
    "large": dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=384),
}


def set_threads(n):
    # Must happen before numpy/torch load their BLAS.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


SETTLED = 0.10          # warm-up ends when the last three steps are within 10% of their median
MAX_WARMUP = 30


def settled(times):
    if len(times) < 3:
        return False
    middle = statistics.median(times)
    return all(abs(t - middle) <= SETTLED * middle for t in times)


def config(model, patch):
    return {**MODELS[model], "patch_size": patch, "image_size": 32, "num_classes": 10, "num_channels": 3}


def kernels_used(kernels, backend):
    """The name of the kernel set ``kernels`` resolves to on ``backend`` ("auto" -> "numba" or "fast")."""
    from npvit.ops import get_kernels, kernels_name
    return kernels_name(get_kernels(kernels, backend))


# -- one measurement, run in a fresh process so peak memory is its own ---------------
def measure(framework, backend, model, patch, batch, repeats, warmup, threads, micro_batch=None, data_parallel=True,
            kernels="auto", patch_dropout=0.0, patch_overlap=0, tf32=False, loss_steps=0):
    set_threads(threads)
    if tf32:                    # TF32 GEMMs on the GPU: CuPy reads this when it loads; torch's flags are set below
        os.environ["CUPY_TF32"] = "1"
    import numpy as np

    import npvit
    from npvit.optim import AdamW

    cfg = config(model, patch)
    if patch_dropout:                        # npvit only (bench_floor.py): training on a share of the tokens
        cfg = {**cfg, "patch_dropout": patch_dropout}
    if patch_overlap:                        # npvit only (bench_floor.py): patch windows reaching past their patch
        cfg = {**cfg, "patch_overlap": patch_overlap}
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y_host = rng.integers(0, 10, batch)
    gpu = backend == "cupy"
    # npvit's CPU threads: the batch split into `threads` shards (npvit.DataParallel), or with
    # --no-data-parallel one shard and BLAS on `threads` threads.
    # "npvit": on the kernel set --kernels names (auto: fused on cupy, numba on the CPU where installed, else fast);
    # "npvit-reference": the same model on the plain reference kernels (npvit/ops/reference.py).
    # "npvit-graph" (cupy): the step captured in a CUDA graph and replayed (--cuda-graph), on the capturable kernels.
    chosen = {"npvit-reference": "reference", "npvit-graph": "capturable"}.get(framework, kernels)
    ours = npvit.ViT(cfg, backend=backend, seed=0, kernels=chosen)
    if data_parallel and not gpu and threads > 1:
        ours = npvit.DataParallel(ours, threads)

    if framework.startswith("npvit"):
        xp = ours.xp
        x, y = npvit.to_device(x_host, xp), npvit.to_device(y_host, xp)
        opt = AdamW(ours, lr=1e-3, weight_decay=0.05)

        def sync():
            if gpu:
                xp.cuda.Device().synchronize()

        from npvit.training.step import train_step as npvit_train_step

        def train_step():
            npvit_train_step(ours, opt, x, y, y, micro_batch=micro_batch)

        if framework == "npvit-graph":
            from npvit.training.capture import CapturedStep, CudaGraphs
            from npvit.training.step import StepRule

            captured = CapturedStep(ours.draw_on_device(), opt, None, StepRule(micro_batch=micro_batch),
                                    CudaGraphs(xp))

            def train_step():
                captured(x, y, y, 0)

        def infer():
            ours.eval()
            ours(x)
            ours.train()
    else:
        import torch

        from reference.article_vit import ViTForClassfication

        torch.set_num_threads(threads)
        dev = "cuda" if gpu else "cpu"
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        ref = ViTForClassfication({**npvit.ViTConfig(**cfg).to_dict(), "hidden_dropout_prob": 0.0,
                                   "attention_probs_dropout_prob": 0.0}).to(dev)
        ref.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
        x, y = torch.tensor(x_host, device=dev), torch.tensor(y_host, device=dev)
        # "torch-graph": the whole step captured in one CUDA graph (the optimiser then needs capturable=True)
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.05, capturable=framework == "torch-graph")
        loss_fn = torch.nn.CrossEntropyLoss()
        forward = torch.compile(ref) if framework == "torch-compile" else ref

        def sync():
            if gpu:
                torch.cuda.synchronize()

        def backward_and_step():
            loss_fn(forward(x)[0], y).backward()
            opt.step()

        def train_step():
            opt.zero_grad(set_to_none=False)
            backward_and_step()

        if framework == "torch-graph":   # PyTorch's documented whole-network capture
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    train_step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)       # backward then writes fresh gradients from the graph's pool
            with torch.cuda.graph(graph):
                backward_and_step()
            train_step = graph.replay

        def infer():
            ref.eval()
            with torch.no_grad():
                forward(x)
            ref.train()

    def once(fn):
        t = time.perf_counter()
        fn()
        sync()
        return 1000 * (time.perf_counter() - t)

    def timed(fn):
        """(timed steps, warm-up steps): at least ``warmup`` warm-up steps, and more until the last three are
        within SETTLED of their median (PyTorch's first CPU steps here take 1.5-2x its steady ones), at most
        MAX_WARMUP; then ``repeats`` timed steps."""
        warm = [once(fn) for _ in range(warmup)]
        while len(warm) < MAX_WARMUP and not settled(warm[-3:]):
            warm.append(once(fn))
        return [once(fn) for _ in range(repeats)], warm

    losses = []
    if loss_steps:              # the loss of the first steps from the initial weights (TF32 against float32)
        if framework == "npvit":
            losses = [float(npvit_train_step(ours, opt, x, y, y, micro_batch=micro_batch)[0])
                      for _ in range(loss_steps)]
        elif framework == "torch":
            for _ in range(loss_steps):
                opt.zero_grad(set_to_none=False)
                loss = loss_fn(forward(x)[0], y)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        else:
            raise ValueError(f"loss_steps is measured for npvit and torch, not {framework}")
    # Memory first: the first step of a fresh process, before allocators cache anything.
    peak_mb = peak_step_memory(train_step, sync, framework, gpu)
    (train_ms, train_warm), (infer_ms, infer_warm) = timed(train_step), timed(infer)
    out = {"train_ms": train_ms, "infer_ms": infer_ms, "peak_mb": peak_mb, "train_warmup_ms": train_warm,
           "infer_warmup_ms": infer_warm, **({"losses": losses} if loss_steps else {})}
    if framework == "npvit" and not gpu:
        import tracemalloc  # NumPy reports its buffers to tracemalloc: a second, allocator-independent reading

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        train_step()
        out["traced_peak_mb"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
        tracemalloc.stop()
    return out


def peak_step_memory(step, sync, framework, gpu):
    """Extra memory at the peak of one training step, in MiB, above what was held before it."""
    if gpu:
        if framework == "npvit-graph":
            return float("nan")     # its first steps run in the graphs' own pool, which the hook below does not see
        if framework.startswith("npvit"):
            import cupy

            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            before = pool.used_bytes()
            # CuPy has no peak counter: sample through a malloc hook
            class Peak(cupy.cuda.MemoryHook):
                name = "peak"
                peak = 0

                def malloc_postprocess(self, **kw):
                    Peak.peak = max(Peak.peak, pool.used_bytes())

            with Peak():
                step()
                sync()
            return (Peak.peak - before) / 2**20
        import torch

        if framework == "torch-graph":
            return float("nan")     # the graph's private pool took its memory at capture; a replay allocates none
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # CPU: reset the RSS high-water mark (Linux clear_refs 5), run the first step, read VmHWM.
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        return float("nan")

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    before = status("VmRSS")
    step()
    return status("VmHWM") - before


# -- per-layer profile ------------------------------------------------------------------
def profile(backend, model, patch, batch, repeats, threads, kernels="auto"):
    """Exclusive time per layer type, forward and backward, from timers wrapped around every layer."""
    set_threads(threads)
    import numpy as np

    import npvit
    from npvit.optim import AdamW

    m = npvit.ViT(config(model, patch), backend=backend, seed=0, kernels=kernels)
    xp = m.xp
    gpu = backend == "cupy"

    def sync():
        if gpu:
            xp.cuda.Device().synchronize()

    names = dict(m.named_layers())
    children = {name: [f"{name}.{c}" for c, _ in layer.children()] for name, layer in names.items() if name}
    incl = {}
    for name in children:
        layer = names[name]
        for kind in ("forward", "backward"):
            orig = getattr(layer, kind)

            def wrapped(*a, _orig=orig, _key=(name, kind), **k):
                sync()
                t = time.perf_counter()
                out = _orig(*a, **k)
                sync()
                incl[_key] = incl.get(_key, 0.0) + time.perf_counter() - t
                return out

            setattr(layer, kind, wrapped)  # an instance attribute shadows the class method
    rng = np.random.default_rng(0)
    x = npvit.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), xp)
    y = npvit.to_device(rng.integers(0, 10, batch), xp)
    opt = AdamW(m, lr=1e-3)
    other = {"loss": 0.0, "optimizer": 0.0, "zero_grad": 0.0}
    for i in range(repeats + 1):
        if i == 1:
            incl.clear()
            other = dict.fromkeys(other, 0.0)
        t = time.perf_counter()
        m.zero_grad()
        sync()
        other["zero_grad"] += time.perf_counter() - t
        logits = m(x)
        t = time.perf_counter()
        loss, d = npvit.softmax_cross_entropy(logits, y)
        sync()
        other["loss"] += time.perf_counter() - t
        m.backward(d)
        t = time.perf_counter()
        opt.step()
        sync()
        other["optimizer"] += time.perf_counter() - t
    rows = {}
    for (name, kind), total in incl.items():
        excl = total - sum(incl.get((c, kind), 0.0) for c in children[name])
        typ = type(names[name]).__name__
        rows.setdefault(typ, {"forward": 0.0, "backward": 0.0})[kind] += excl
    for k, v in other.items():
        rows[k] = {"forward": v if k == "loss" else 0.0, "backward": 0.0 if k == "loss" else v}
    return {k: {kk: 1000 * vv / repeats for kk, vv in v.items()} for k, v in rows.items()}


# -- driver -------------------------------------------------------------------------------
def machine_info(backend):
    import numpy as np

    info = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                                     None)
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if backend == "cupy":
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if backend == "cupy":
        import cupy

        info["cupy"] = cupy.__version__
    return info


def run_child(args):
    """Measure one (framework, model, patch, batch) in a fresh Python process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(args)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    p.add_argument("--threads", type=int, default=2, help="BLAS/torch threads for both frameworks (CPU)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=["article"],
                   help="article (default, about 5 minutes on 2 cores); add large for the full grid (about 25)")
    p.add_argument("--patches", nargs="+", type=int, default=[4, 2])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="default 32 128 256 on the CPU, 256 1024 on the GPU")
    p.add_argument("--repeats", type=int, default=10, help="timed steps per round, after the warm-up")
    p.add_argument("--rounds", type=int, default=2,
                   help="fresh processes per framework, alternating npvit/torch; the median is over all rounds")
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps at least; more until the step time settles "
                   "(the last three within 10%% of their median), at most 30; reported apart in the JSON")
    p.add_argument("--quick", action="store_true", help="article model, patch 4, batch 256 only")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="npvit runs each training batch in chunks of this size (the same update; see README)")
    p.add_argument("--no-data-parallel", dest="data_parallel", action="store_false",
                   help="npvit as one shard with BLAS on --threads threads, instead of --threads shards on threads")
    p.add_argument("--profile", action="store_true",
                   help="print time per layer (npvit, one shard, BLAS on --threads threads) instead of the comparison")
    p.add_argument("--kernels", default="auto",
                   help="npvit's kernel set, a name of npvit.ops.NAMED (auto: the fastest that runs here)")
    p.add_argument("--tf32-check", action="store_true",
                   help="cupy: npvit (fused) and PyTorch eager with TF32 GEMMs off and on: step times, and the loss "
                        "of 10 AdamW steps against float32 without TF32")
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/results/<backend>.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(measure(**json.loads(a.child))))
        return 0
    from npvit.ops import NAMED         # here, not at the top: a child sets its BLAS threads before NumPy loads
    if a.kernels not in NAMED:
        p.error(f"argument --kernels: invalid choice: {a.kernels!r} (choose from {', '.join(NAMED)})")
    batches = a.batch_sizes or ([256, 1024] if a.backend == "cupy" else [32, 128, 256])
    models, patches = a.models, a.patches
    if a.quick:
        models, patches, batches = ["article"], [4], [256]
    if a.tf32_check:
        if a.backend != "cupy":
            p.error("--tf32-check compares TF32 GEMMs on a GPU: it needs --backend cupy")
        return tf32_check(a, models, patches, batches)
    if a.profile:
        for model in models:
            for patch in patches:
                for b in batches:
                    rows = profile(a.backend, model, patch, b, a.repeats, a.threads, a.kernels)
                    total = sum(v["forward"] + v["backward"] for v in rows.values())
                    print(f"\nnpvit per-layer time, {kernels_used(a.kernels, a.backend)} kernels, {model} model, "
                          f"patch {patch}, batch {b}, {a.backend}, "
                          f"{a.threads} threads (exclusive ms per step; total {total:.1f} ms)")
                    print(f"{'layer':<26}{'forward':>10}{'backward':>10}{'share':>8}")
                    for k, v in sorted(rows.items(), key=lambda kv: -(kv[1]['forward'] + kv[1]['backward'])):
                        print(f"{k:<26}{v['forward']:>10.1f}{v['backward']:>10.1f}"
                              f"{100 * (v['forward'] + v['backward']) / total:>7.1f}%")
        return 0
    results = []
    header = (f"{'model':<8}{'tokens':>7}{'batch':>6} | {'train ms':>9}{'torch':>9}{'ratio':>7}{'ref ms':>9}{'ratio':>7} | "
              f"{'infer ms':>9}{'torch':>9}{'ratio':>7}{'ref ms':>9}{'ratio':>7} | {'peak MiB':>9}{'torch':>8}{'ratio':>7}")
    print(f"npvit vs PyTorch, {a.backend}, {a.threads} threads, median of {a.rounds} alternating rounds x "
          f"{a.repeats} steps, each after at least {a.warmup} warm-up steps, more until settled; "
          f"peak = extra memory of one training step"
          + (f"; npvit in micro-batches of {a.micro_batch}" if a.micro_batch else "")
          + ("" if a.data_parallel or a.backend == "cupy" else "; npvit as one shard (--no-data-parallel)")
          + f"; npvit on its {kernels_used(a.kernels, a.backend)} kernels, ref on its reference kernels (ratio to torch)")
    print(header)
    print("-" * len(header))
    for model in models:
        for patch in patches:
            for b in batches:
                row = {"model": model, "patch": patch, "tokens": (32 // patch) ** 2 + 1, "batch": b}
                frameworks = ("npvit", "npvit-reference", "torch") + (
                    ("npvit-graph", "torch-compile", "torch-graph") if a.backend == "cupy" else ())
                raw = {fw: {"train_ms": [], "infer_ms": [], "train_warmup_ms": [], "infer_warmup_ms": []}
                       for fw in frameworks}
                for rnd in range(a.rounds):
                    for fw in frameworks:
                        r = run_child(dict(framework=fw, backend=a.backend, model=model, patch=patch, batch=b,
                                           repeats=a.repeats, warmup=a.warmup, threads=a.threads,
                                           micro_batch=a.micro_batch if fw != "torch" else None,
                                           data_parallel=a.data_parallel, kernels=a.kernels))
                        for k in raw[fw]:           # the timed steps pooled; the warm-up steps kept per round
                            if k.endswith("warmup_ms"):
                                raw[fw][k].append(r.pop(k))
                            else:
                                raw[fw][k].extend(r.pop(k))
                        if rnd == 0:
                            row.update({f"{fw}_{k}": v for k, v in r.items()})
                for fw, times in raw.items():
                    for k, v in times.items():
                        if k.endswith("warmup_ms"):         # per round: the warm-up steps, apart from the timed ones
                            row[f"{fw}_{k}"] = v
                            continue
                        row[f"{fw}_{k}"] = statistics.median(v)
                        row[f"{fw}_{k}_all"] = v
                for k in ("train_ms", "infer_ms", "peak_mb"):
                    row[f"ratio_{k}"] = row[f"npvit_{k}"] / row[f"torch_{k}"] if row[f"torch_{k}"] else float("nan")
                for k in ("train_ms", "infer_ms"):
                    row[f"ratio_reference_{k}"] = row[f"npvit-reference_{k}"] / row[f"torch_{k}"]
                results.append(row)
                print(f"{model:<8}{row['tokens']:>7}{b:>6} | {row['npvit_train_ms']:>9.1f}{row['torch_train_ms']:>9.1f}"
                      f"{row['ratio_train_ms']:>7.2f}{row['npvit-reference_train_ms']:>9.1f}"
                      f"{row['ratio_reference_train_ms']:>7.2f} | {row['npvit_infer_ms']:>9.1f}"
                      f"{row['torch_infer_ms']:>9.1f}{row['ratio_infer_ms']:>7.2f}{row['npvit-reference_infer_ms']:>9.1f}"
                      f"{row['ratio_reference_infer_ms']:>7.2f} | {row['npvit_peak_mb']:>9.1f}{row['torch_peak_mb']:>8.1f}"
                      f"{row['ratio_peak_mb']:>7.2f}", flush=True)
                for fw in frameworks[3:]:   # on the GPU: npvit captured, PyTorch's other modes; against npvit
                    row[f"npvit_over_{fw}_train_ms"] = row["npvit_train_ms"] / row[f"{fw}_train_ms"]
                    print(f"{'':<21} | {fw}: train {row[f'{fw}_train_ms']:.2f} ms (npvit/{fw} "
                          f"{row[f'npvit_over_{fw}_train_ms']:.2f}), infer {row[f'{fw}_infer_ms']:.2f} ms, "
                          f"peak {row[f'{fw}_peak_mb']:.1f} MiB", flush=True)
                if "npvit-graph" in frameworks:     # the target: captured against captured
                    row["graph_over_torch_graph_train_ms"] = row["npvit-graph_train_ms"] / row["torch-graph_train_ms"]
                    print(f"{'':<21} | npvit-graph/torch-graph train {row['graph_over_torch_graph_train_ms']:.2f}",
                          flush=True)
                write_results(a, results)
    print(f"wrote {write_results(a, results)}")
    return 0


def tf32_check(a, models, patches, batches, steps=10):
    """npvit and PyTorch with TF32 GEMMs off and on: the step's time and the loss of its first ``steps`` AdamW
    steps, against the same framework's float32 without TF32 (max relative difference over the steps)."""
    results = []
    print(f"TF32 against float32: step ms (median of {a.repeats}) and the loss of {steps} AdamW steps from the "
          f"same weights and batch")
    for model in models:
        for patch in patches:
            for b in batches:
                for fw in ("npvit", "torch"):
                    runs = {tf32: run_child(dict(framework=fw, backend="cupy", model=model, patch=patch, batch=b,
                                                 repeats=a.repeats, warmup=a.warmup, threads=1, kernels=a.kernels,
                                                 tf32=tf32, loss_steps=steps)) for tf32 in (False, True)}
                    off, on = runs[False]["losses"], runs[True]["losses"]
                    row = {"model": model, "patch": patch, "batch": b, "framework": fw,
                           "train_ms": statistics.median(runs[False]["train_ms"]),
                           "train_ms_tf32": statistics.median(runs[True]["train_ms"]),
                           "losses": off, "losses_tf32": on,
                           "max_rel_loss_diff": max(abs(x - y) / abs(x) for x, y in zip(off, on))}
                    results.append(row)
                    print(f"{model:<8} patch {patch} batch {b:<5} {fw:<6} float32 {row['train_ms']:.2f} ms, TF32 "
                          f"{row['train_ms_tf32']:.2f} ms; loss after {steps} steps {off[-1]:.5f} / {on[-1]:.5f}, "
                          f"max relative difference {row['max_rel_loss_diff']:.2e}", flush=True)
                    write_results(a, results)
    print(f"wrote {write_results(a, results)}")
    return 0


def write_results(a, results):
    """The JSON of the rows so far (after each row: a benchmark stopped by a deadline keeps what it measured)."""
    out = a.json or os.path.join(REPO, "benchmarks", "results", f"{a.backend}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump({"backend": a.backend, "kernels": kernels_used(a.kernels, a.backend), "threads": a.threads,
                   "repeats": a.repeats, "rounds": a.rounds, "micro_batch": a.micro_batch,
                   "data_parallel": a.data_parallel, "warmup": a.warmup,
                   "info": machine_info(a.backend), "results": results}, f, indent=1)
    os.replace(out + ".tmp", out)
    return out


if __name__ == "__main__":
    sys.exit(main())
