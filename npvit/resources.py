"""What a training run will need in memory, and what the machine has: the guard that refuses a run that cannot
fit before anything is allocated.

The estimate counts, in bytes: the parameters and their gradients (one gradient buffer per CPU shard
besides the model's), AdamW's two moments and its per-group vectors, the moving average, the
activations every layer keeps for its backward for one batch (all shards together) plus the
backward's temporaries, one evaluation batch, the augmented batch, and the dataset itself (uint8 on
the host; on a GPU a copy on the device too). Counted from the config alone, by arithmetic: a
config of a billion parameters is refused in microseconds. tests/test_resources.py holds the
estimate against the measured peak memory of real runs.
"""
from __future__ import annotations

import os

import dataclasses

import numpy as np

# What the interpreter, NumPy, Numba and npvit's modules take before a run allocates anything; added to
# every CPU estimate.
BASELINE_BYTES = 100 * 2 ** 20


def num_parameters(c) -> int:
    """The parameter count of the ViT that ViTConfig ``c`` describes (as ViT(c).num_parameters())."""
    D, I, L, K, C, P = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_classes, c.num_channels, c.patch_size
    N = c.num_tokens
    block = (3 * D * D + (3 * D if c.qkv_bias else 0)) + (D * D + D) + 2 * (2 * D) + (I * D + I) + (D * I + D)
    return (D * C * P * P + D) + D + N * D + L * block + (2 * D if c.final_layernorm else 0) + (K * D + K)


def activation_bytes_per_image(c, itemsize, training=True):
    """What one image's forward keeps for its backward, plus the backward's temporaries (training), or what
    one image's forward holds (evaluation)."""
    D, I, H, L = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers
    N = c.num_tokens
    if training and c.patch_dropout > 0:
        N = 1 + max(1, round((1.0 - c.patch_dropout) * (N - 1)))
    dropout = c.attention_probs_dropout_prob > 0
    att = H * N * N * (3 if dropout else 1)                  # probabilities (and mask, dropped copy)
    block = 16 * N * D + 3 * N * I + att                     # layer norms, qkv (two layouts), context, residuals, MLP
    embed = 3 * c.num_channels * c.image_size ** 2 + 3 * N * D
    per_image = L * block + embed
    if training:
        per_image += 6 * N * D + 2 * N * I + 2 * H * N * N      # the backward's temporaries at its peak
    return per_image * itemsize


def estimate(settings, threads=1, train_images=50_000, test_images=10_000) -> dict:
    """The bytes a run of ``settings`` (its Settings: the training options and the model) will need, by part.
    The dataset is counted whole: --train-limit and --test-limit take their images from it once it is read. A
    batch holds no more images than the run trains on, and an evaluation batch no more than it evaluates."""
    s, config = settings, settings.model
    if s.patch_dropout_final is not None:           # the epoch that keeps the most tokens
        config = dataclasses.replace(config, patch_dropout=min(config.patch_dropout, s.patch_dropout_final))
    itemsize = np.dtype(s.dtype).itemsize
    P = num_parameters(config)
    shards = threads if s.backend == "numpy" else 1
    image = config.num_channels * config.image_size ** 2
    used = min(train_images, s.train_limit or train_images)
    held_out = min(s.val_split or 0, used)
    evaluated = held_out or min(test_images, s.test_limit or test_images)
    batch = max(1, min(s.batch_size, used - held_out))
    eval_batch = max(1, min(s.eval_batch_size, evaluated))
    parts = {
        "parameters and gradients": P * itemsize * (2 + (shards if shards > 1 else 0)),
        "optimiser state": P * itemsize * (2 + (1 if s.decay == "matrices" else 0)),
        "moving average": P * itemsize if s.ema else 0,
        # a training step's (its augmented batch too) or an evaluation batch's, whichever is larger: both run
        # through the same layers (and shards), whose caches the next forward replaces
        "activations": max(min(s.micro_batch or batch, batch) * activation_bytes_per_image(config, itemsize)
                           + batch * image * itemsize * (8 if s.trivial_augment else 4),
                           eval_batch * activation_bytes_per_image(config, itemsize, training=False)
                           * (2 if s.tta_flip else 1)),
        "dataset": (train_images + test_images) * image * (2 if s.backend == "cupy" else 1),
    }
    if s.cuda_graph:            # the graphs' own pool keeps a step's activations besides the eager ones
        parts["the CUDA graphs' memory pool"] = min(s.micro_batch or batch, batch) * activation_bytes_per_image(
            config, itemsize)
    return parts


def available_memory(backend="numpy"):
    """(bytes, where): the memory a new allocation can count on and what sets it. On the CPU the smaller of the
    kernel's MemAvailable ("on this machine") and what this process's cgroups still allow ("in this process's
    cgroup ..."); on a GPU the device's free memory ("on the GPU"). (None, where) where it cannot be read."""
    if backend == "cupy":
        try:
            import cupy
            return int(cupy.cuda.runtime.memGetInfo()[0]), "on the GPU"
        except Exception:
            return None, "on the GPU"
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * 1024, "on this machine"))
    except OSError:
        pass
    left = cgroup_headroom()
    if left is not None:
        found.append((left, "in this process's cgroup (its memory limit less what it uses)"))
    return min(found) if found else (None, "on this machine")


# Per cgroup version: the limit file, the usage file, and memory.stat's reclaimable page-cache line (counted
# as free: the kernel drops that cache before it kills anything).
CGROUP_FILES = {1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
                2: ("memory.max", "memory.current", "inactive_file")}
NO_LIMIT = 2 ** 60          # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)


def cgroup_headroom(root="/"):
    """The memory this process's own cgroups still allow: for each memory cgroup it belongs to (v1's memory
    controller and v2's unified group, from /proc/self/cgroup, found through /proc/self/mountinfo), walking up
    from its group to the top of the mount, the least of (limit - usage + reclaimable cache). None where no
    limit is set or nothing can be read. ``root``: a folder that stands for / (for the tests)."""
    def read(path):
        with open(os.path.join(root, path.lstrip("/"))) as f:
            return f.read()

    try:
        groups = [line.split(":", 2) for line in read("/proc/self/cgroup").splitlines() if line.count(":") >= 2]
        mounts = [line.split() for line in read("/proc/self/mountinfo").splitlines()]
    except OSError:
        return None
    best = None
    for hid, controllers, path in groups:
        version = 2 if hid == "0" and controllers == "" else 1 if "memory" in controllers.split(",") else None
        if version is None:
            continue
        for fields in mounts:
            if "-" not in fields:
                continue
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
            if not (version == 2 and fstype == "cgroup2" or version == 1 and fstype == "cgroup"
                    and "memory" in options.split(",")):
                continue
            mount_root, mount_point = fields[3], fields[4]
            rel = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
            if rel.startswith(".."):
                continue                        # our group lies outside what this mount shows
            folder = os.path.normpath(os.path.join(mount_point, rel))
            while True:
                left = _headroom(read, folder, version)
                if left is not None and (best is None or left < best):
                    best = left
                if os.path.normpath(folder) == os.path.normpath(mount_point):
                    break
                folder = os.path.dirname(folder)
            break
    return best


def _headroom(read, folder, version):
    """limit - usage + reclaimable cache of one cgroup folder; None without a limit or where unreadable."""
    limit_file, usage_file, cache_line = CGROUP_FILES[version]
    try:
        text = read(os.path.join(folder, limit_file)).strip()
        if text == "max" or int(text) >= NO_LIMIT:
            return None
        usage = int(read(os.path.join(folder, usage_file)).strip())
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        for line in read(os.path.join(folder, "memory.stat")).splitlines():
            key, _, value = line.partition(" ")
            if key == cache_line:
                cache = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(text) - max(0, usage - cache))


def gib(n):
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.0f} MiB"


def check_fits(settings, threads, train_images=50_000, test_images=10_000, available=None):
    """None if the run of ``settings`` fits (or nothing can be said), else the one line that says it does not:
    the estimate, its largest parts, and what is available."""
    parts = estimate(settings, threads, train_images, test_images)
    need = sum(parts.values()) + (BASELINE_BYTES if settings.backend == "numpy" else 0)
    where = "on the GPU" if settings.backend == "cupy" else "on this machine"
    if available is None:
        have, where = available_memory(settings.backend)
    else:
        have = available
    if have is None or need <= have:
        return None
    largest = ", ".join(f"{name} {gib(n)}" for name, n in sorted(parts.items(), key=lambda kv: -kv[1])[:3] if n)
    return (f"this run would need about {gib(need)} of memory ({largest}; {num_parameters(settings.model):,} parameters), "
            f"more than the {gib(have)} available {where}: make the model or --batch-size smaller (or use "
            f"--micro-batch), or pass --no-memory-check to try anyway")


def folder_image_count(root):
    """How many images an image-folder dataset holds (file names only: nothing is read)."""
    from .data import IMAGE_EXTENSIONS

    counts = []
    for split in ("train", "test"):
        total = 0
        for dirpath, _, files in os.walk(os.path.join(root, split)):
            total += sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
        counts.append(total)
    return counts
