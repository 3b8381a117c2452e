"""Save and load a model (and optionally optimiser state and metadata) as one ``.npz`` file,
and exchange weights with PyTorch through ``.safetensors``.

Parameters are stored under their PyTorch names (``param/embedding.cls_token``...),
optimiser state under ``optim/...``, a training run's moving average of the weights
(npvit/ema.py) under ``ema/...``, and the config plus any metadata as JSON
text under ``config.json`` / ``meta.json``, so ``np.load`` alone can read it, and
never with pickle. Writes are atomic (npvit/runfiles.py).

A ``.safetensors`` file holds the weights alone, under the same names, with the
config as JSON in its metadata: ``safetensors.torch.load_file`` reads it straight
into the article's PyTorch model, and a state dict saved there loads here.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

from . import __version__
from .config import ViTConfig
from .errors import CheckpointError
from .runfiles import atomic_write, half_replaced

FORMAT_VERSION = 1

# The weights that ship with npvit (a --recipe full run; its model card is in docs/training.md), and their SHA-256, recorded in a
# file beside them (NAME.sha256) when they were made (tests/test_pretrained.py holds the two together): a damaged copy in an
# installed package is refused in one line instead of giving wrong answers under the card's accuracy.
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "vit-cifar10.safetensors")
# A second set that ships: the same model pooled by its [CLS] token, as transformers' ViT is (a --recipe fast80
# --pooling cls run; docs/interop.md), so that `npvit export --format hf` of weights in the box runs in
# transformers' own pipeline.
SHIPPED_CLS = os.path.join(os.path.dirname(SHIPPED), "vit-cifar10-cls.safetensors")


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            h.update(block)
    return h.hexdigest()


def check_shipped(path=SHIPPED):
    """Refuse, in one line that says to reinstall npvit, shipped weights that are missing, unreadable, or not
    the bytes that were recorded (their SHA-256)."""
    damaged = f"the weights that ship with npvit ({path})"
    fix = "reinstall npvit (pip install --force-reinstall npvit; in a clone, git checkout npvit/weights)"
    try:
        recorded = open(os.fspath(path) + ".sha256", encoding="ascii").read().split()[0]
        actual = sha256_of(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{damaged} are damaged: {e.filename} is missing; {fix}") from None
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise CheckpointError(f"{damaged} are damaged: they cannot be read ({getattr(e, 'strerror', None) or e}); "
                              f"{fix}") from None
    if actual != recorded:
        raise CheckpointError(f"{damaged} are damaged: their SHA-256 is {actual[:12]}..., not the {recorded[:12]}... "
                              f"recorded when they were made; {fix}")


def is_shipped(path):
    return os.path.realpath(os.fspath(path)) in (os.path.realpath(SHIPPED), os.path.realpath(SHIPPED_CLS))


class Checkpoint(NamedTuple):
    """What a checkpoint file holds, as host arrays."""
    config: ViTConfig       # the model's
    params: dict            # name -> weights, under the article's PyTorch names
    optim: dict             # the optimiser's state_dict(), or {} (a model-only file)
    meta: dict              # JSON metadata: dtype, and for a training run its state, history and config
    averaged: dict          # the moving average of the weights that training evaluated (--ema), or {}


def checkpoint_arrays(model, optimizer=None, meta=None, averaged=None):
    """The arrays of a checkpoint file, by entry name: ``model``'s weights (+ ``optimizer`` state, + JSON-able
    ``meta``, + ``averaged`` weights, a dict like ``model.state_dict()``)."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    if averaged is not None:
        arrays.update({f"ema/{k}": v for k, v in averaged.items()})
    arrays["config.json"] = np.array(json.dumps(model.config.to_dict()))
    arrays["meta.json"] = np.array(json.dumps({"format_version": FORMAT_VERSION, "npvit_version": __version__,
                                               "dtype": model.dtype.name, **(meta or {})}))
    return arrays


def npz_writer(arrays):
    """The ``write`` of :func:`npvit.runfiles.atomic_write` that writes the arrays as one .npz."""
    return lambda f: np.savez(f, **arrays)


def save_checkpoint(path, model, optimizer=None, meta=None, averaged=None):
    """Write ``model`` (+ ``optimizer`` state, + JSON-able ``meta``, + ``averaged`` weights) to ``path``
    atomically."""
    return atomic_write(path, npz_writer(checkpoint_arrays(model, optimizer, meta, averaged)))


def read_checkpoint(path, config=None) -> Checkpoint:
    """The Checkpoint record of a file (.npz written by npvit, or .safetensors) or of a transformers model
    directory (npvit/interop.py), as host arrays. ``config``
    (a ViTConfig or dict): the model of a .safetensors that carries none (a PyTorch state dict)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if is_shipped(path):
        check_shipped(path)
    if half_replaced(folder):
        raise CheckpointError(f"{path} is what is left of a run that an interrupted --overwrite was deleting, not "
                              f"a finished run's checkpoint: start that run again with --overwrite, or use another "
                              f"checkpoint")
    if os.path.isdir(path):
        from .interop import is_hf_dir, read_hf

        if is_hf_dir(path):
            return read_hf(path)
        raise CheckpointError(f"{path} is a directory, not a checkpoint: give a run's latest.npz or best.npz, or a "
                              f"transformers model directory (config.json and model.safetensors)")
    if not os.path.isfile(path):
        if os.path.basename(path) == "best.npz" and os.path.isfile(os.path.join(folder, "latest.npz")):
            raise CheckpointError(f"no checkpoint at {path} yet: a run writes best.npz at its first evaluation "
                                  f"(--eval-every; every 5 epochs in --recipe full); use "
                                  f"{os.path.join(os.path.dirname(path), 'latest.npz')} meanwhile")
        raise CheckpointError(f"no checkpoint at {path}")
    if path.endswith(".safetensors"):
        config, params, meta = read_safetensors(path, config)
        return Checkpoint(config, params, {}, meta, {})
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except PermissionError:
        raise CheckpointError(f"cannot read checkpoint {path}: permission denied") from None
    except Exception as e:   # truncated or foreign files fail in zipfile, zlib or NumPy's reader
        if "allow_pickle" in str(e):   # allow_pickle=False refuses object arrays with a ValueError: no code ran
            raise CheckpointError(f"{path} is not a readable npvit checkpoint: not an .npz of plain arrays (NumPy "
                                  f"could read it only as a pickle, which npvit never loads)") from None
        raise CheckpointError(f"{path} is not a readable npvit checkpoint ({type(e).__name__}: {e})") from None
    if "config.json" not in data or "meta.json" not in data:
        raise CheckpointError(f"{path} is not an npvit checkpoint (no config.json/meta.json entries)")
    try:
        config = ViTConfig.from_dict(json.loads(str(data["config.json"])))
        meta = json.loads(str(data["meta.json"]))
        if not isinstance(meta, dict):
            raise ValueError("meta.json is not a JSON object")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a damaged config or metadata entry ({e})") from None
    check_format(meta, path)
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    optim = {k[len("optim/"):]: v for k, v in data.items() if k.startswith("optim/")}
    averaged = {k[len("ema/"):]: v for k, v in data.items() if k.startswith("ema/")}
    check_dtypes(params, optim, averaged, meta, path)
    return Checkpoint(config, params, optim, meta, averaged)


def check_format(meta, path):
    """The checkpoint's format must be one this npvit reads: a newer one is named with the npvit that wrote it,
    a missing or older one is refused (format 1 is the first; there is nothing older to migrate)."""
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path} says no checkpoint format (its meta.json has no integer format_version): it "
                              f"was not written by npvit, or was altered")
    if version > FORMAT_VERSION:
        writer = f"npvit {meta['npvit_version']}" if isinstance(meta.get("npvit_version"), str) else "a newer npvit"
        raise CheckpointError(f"{path} was written by {writer} in checkpoint format {version}; this npvit "
                              f"({__version__}) reads format {FORMAT_VERSION}: upgrade npvit to read it")
    if version < 1:
        raise CheckpointError(f"{path} is in checkpoint format {version}, older than any npvit wrote (the first is "
                              f"1): it was not written by npvit, or was altered")


def check_dtypes(params, optim, averaged, meta, path):
    """Every array in the dtype the run expects: the weights and their moving average in the model's dtype (the
    one meta.json names), the optimiser's state in that dtype or wider, its step counter an integer. A
    checkpoint otherwise would load with silent casts and train differently: one line refuses it."""
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise CheckpointError(f"{path} names the model's dtype {dtype!r}; npvit writes float32 or float64")
    want = np.dtype(dtype)

    def refuse(name, array, what):
        raise CheckpointError(f"{path}: {name} is {array.dtype}, but {what}: this checkpoint was not written by npvit "
                              f"training as it is (altered?), and would load with a silent cast; refused")
    for kind, arrays in (("weight", params), ("averaged weight", averaged)):
        for name, a in arrays.items():
            if a.dtype != want:
                refuse(f"{kind} {name}", a, f"the model is {dtype}")
    for name, a in optim.items():
        if name == "step_count":
            if a.dtype.kind not in "iu":
                refuse("the optimiser's step_count", a, "a step counter is an integer")
        elif a.dtype.kind != "f" or a.dtype.itemsize < want.itemsize:
            refuse(f"optimiser state {name}", a, f"the optimiser's state must be {dtype} or wider, like the model")


def evaluated_weights(params, averaged):
    """The weights a training run evaluated: the moving average of its weights where it kept one (--ema),
    else the weights themselves. What evaluate, predict, export and --init-from take."""
    return averaged or params


def check_finite(params, path):
    """Refuse weights holding NaN or infinity, naming the arrays (a diverged run's model)."""
    bad = [k for k, v in params.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights (NaN or inf) in {len(bad)} arrays: "
                              f"{', '.join(bad[:6])}{', ...' if len(bad) > 6 else ''}; the run that wrote it "
                              f"diverged, use an earlier checkpoint")


def load_checkpoint(path, backend="numpy", dtype=None, averaged=False, config=None):
    """Rebuild the model saved at ``path`` (.npz or .safetensors): returns ``(model, optim_state, meta)``.

    ``dtype`` defaults to the saved one. The model is a plain ViT: running it on several CPU threads
    (``npvit.DataParallel(model, threads)``) is the caller's choice. Pass ``optim_state`` to an
    optimiser's ``load_state_dict`` to resume. ``averaged``: take the moving average of the weights
    where the checkpoint keeps one (the weights a run with --ema evaluated).
    Non-finite weights are refused. ``config``: the model of a .safetensors that carries none.
    """
    from .model import ViT

    ckpt = read_checkpoint(path, config)
    params = evaluated_weights(ckpt.params, ckpt.averaged) if averaged else ckpt.params
    check_finite(params, path)
    model = ViT(ckpt.config, backend=backend, dtype=dtype or ckpt.meta.get("dtype", "float32"))
    try:
        model.load_state_dict(params)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, ckpt.optim, ckpt.meta


# -- safetensors -------------------------------------------------------------------------
def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError:
        raise CheckpointError("reading or writing .safetensors needs the safetensors package: "
                              "pip install safetensors (npvit's [safetensors] extra)") from None
    return safetensors.numpy


def export_safetensors(src, dst, dtype=None, config=None):
    """Write the weights of checkpoint ``src`` (.npz) to ``dst`` (.safetensors) under the PyTorch names:
    the ones its run evaluated (the moving average where it kept one, --ema). ``dtype`` (e.g. "float32")
    casts them, else they keep the checkpoint's dtype."""
    from .model import ViT

    ckpt = read_checkpoint(src, config)
    config, meta = ckpt.config, ckpt.meta
    params = evaluated_weights(ckpt.params, ckpt.averaged)
    check_finite(params, src)
    try:                        # the arrays must be the model's, each of its shape, before anything is written
        ViT(config, kernels="reference").load_state_dict(params)
    except ValueError as e:
        raise CheckpointError(f"{src}: {e}") from None
    st = _safetensors_numpy()
    if dtype is not None:
        params = {k: v.astype(dtype) for k, v in params.items()}
    card = {k: meta[k] for k in ("classes", "mean", "std") if k in meta}
    trained = meta.get("train_config") or {}
    card.update({k: trained[k] for k in ("recipe", "seed") if k in trained})
    evaluated = [r for r in meta.get("history", []) if "test_acc" in r]
    if evaluated:                      # what its run measured on the test set, at the epoch these weights are from
        card.update(test_acc=evaluated[-1]["test_acc"], epoch=evaluated[-1]["epoch"])
    metadata = {"format": "pt", "npvit_config": json.dumps(config.to_dict()), "npvit_meta": json.dumps(card)}
    # safetensors wants contiguous arrays; its save writes bytes we then place atomically.
    tensors = {k: np.ascontiguousarray(v) for k, v in params.items()}
    atomic_write(dst, lambda f: f.write(st.save(tensors, metadata=metadata)))
    return dst


def read_safetensors(path, config=None):
    """``(config, params, meta)`` from a .safetensors file; the config comes from its metadata
    (written by npvit) or from ``config`` (a file saved by PyTorch holds none)."""
    _safetensors_numpy()
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            params = {k: f.get_tensor(k) for k in f.keys()}
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
    except Exception as e:   # the safetensors parser raises its own error types
        raise CheckpointError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {e})") from None
    try:
        own = ViTConfig.from_dict(json.loads(metadata["npvit_config"])) if "npvit_config" in metadata else None
        meta = json.loads(metadata.get("npvit_meta", "{}"))
        if not isinstance(meta, dict):
            raise ValueError("npvit_meta is not a JSON object")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has a damaged npvit config in its metadata ({e})") from None
    if isinstance(config, dict):
        config = ViTConfig.from_dict(config)
    if own is not None and config is not None and own != config:
        diff = {k: (v, getattr(config, k)) for k, v in own.to_dict().items() if getattr(config, k) != v}
        raise CheckpointError(f"{path} is for another model than the config given: (file, given) differ in {diff}")
    config = own or config
    from .interop import config_from_timm_kwargs, is_timm_state, state_from_timm

    timm = is_timm_state(params)
    if timm and config is None and "timm_kwargs" in metadata:   # written by npvit export --format timm
        config = config_from_timm_kwargs(json.loads(metadata["timm_kwargs"]), path)
    if config is None:
        raise CheckpointError(f"{path} carries no model config (it was saved outside npvit, e.g. by "
                              f"safetensors.torch.save_file): give it with --config FILE or the model flags "
                              f"(--hidden-size ...), or load_safetensors(path, config=...) in Python")
    if timm:                                # a timm VisionTransformer's state dict: into the article's names
        params = state_from_timm(params, config)
    meta["dtype"] = str(next(iter(params.values())).dtype) if params else "float32"
    if meta["dtype"] not in ("float32", "float64"):
        meta["dtype"] = "float32"
    return config, params, meta


def load_safetensors(path, config=None, backend="numpy", dtype="float32"):
    """A ViT with the weights of a .safetensors file (npvit's, or a PyTorch state dict of the article's model)."""
    from .model import ViT

    config, params, _ = read_safetensors(path, config)
    check_finite(params, path)
    model = ViT(config, backend=backend, dtype=dtype)
    try:
        model.load_state_dict(params)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model
