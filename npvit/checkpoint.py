"""Save and load a model (and optionally optimiser state and metadata) as one ``.npz`` file.

Parameters are stored under their PyTorch names (``param/embedding.cls_token``...),
optimiser state under ``optim/...``, and the config plus any metadata as JSON
text under ``config.json`` / ``meta.json``, so ``np.load`` alone can read it.
Writes go to a temporary file that replaces the target only when complete.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from .config import ViTConfig

FORMAT_VERSION = 1


def save_checkpoint(path, model, optimizer=None, meta=None):
    """Write ``model`` (+ ``optimizer`` state, + JSON-able ``meta``) to ``path`` atomically."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    arrays["config.json"] = np.array(json.dumps(model.config.to_dict()))
    arrays["meta.json"] = np.array(json.dumps({"format_version": FORMAT_VERSION, "dtype": model.dtype.name,
                                               **(meta or {})}))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_checkpoint(path):
    """Return ``(config, params, optim_state, meta)`` from a checkpoint file, as host arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path} is not a readable npvit checkpoint ({e})") from e
    if "config.json" not in data or "meta.json" not in data:
        raise ValueError(f"{path} is not an npvit checkpoint (no config.json/meta.json entries)")
    config = ViTConfig.from_dict(json.loads(str(data["config.json"])))
    meta = json.loads(str(data["meta.json"]))
    params = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
    optim = {k[len("optim/"):]: v for k, v in data.items() if k.startswith("optim/")}
    return config, params, optim, meta


def load_checkpoint(path, backend="numpy", dtype=None, threads=1):
    """Rebuild the model saved at ``path``: returns ``(model, optim_state, meta)``.

    ``dtype`` defaults to the saved one; ``threads`` as in ``ViT``; pass ``optim_state`` to an optimiser's
    ``load_state_dict`` to resume.
    """
    from .model import ViT

    config, params, optim, meta = read_checkpoint(path)
    model = ViT(config, backend=backend, dtype=dtype or meta.get("dtype", "float32"), threads=threads)
    model.load_state_dict(params)
    return model, optim, meta
