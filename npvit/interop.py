"""Hugging Face transformers' ViT in and out of npvit: ``ViTForImageClassification`` as ``save_pretrained``
writes it (a directory of config.json, model.safetensors and, from an image processor, preprocessor_config.json)
or in memory, to an npvit ViT and back. Nothing here imports torch or transformers to read or write files.

    read_hf(directory)            -> Checkpoint (npvit/checkpoint.py): every loader takes such a directory
    from_hf(model)                -> (ViT, meta), from a ViTForImageClassification in memory
    save_hf(model, out_dir, ...)  writes a directory ViTForImageClassification.from_pretrained(out_dir) loads
    to_hf(model, ...)             -> ViTForImageClassification in memory (needs transformers)

What maps: the patch embedding, [CLS] token and positions as they are; transformers' separate query, key and
value projections stacked into npvit's fused ``qkv_projection`` (Q rows, K rows, V rows, each head-major, as
the article's fused form); ``layernorm_before``/``after`` to ``layernorm_1``/``2``; ``intermediate`` and
``output`` to the MLP; the final ``vit.layernorm`` (transformers always has one: ``final_layernorm``);
``hidden_act`` "gelu" to exact GELU and "gelu_new"/"gelu_pytorch_tanh" to the tanh form; ``layer_norm_eps``;
``num_labels``/``id2label`` to the classes; the processor's ``image_mean``/``image_std`` to the normalisation.
What does not is refused in one line: mean pooling (transformers' classifier reads the [CLS] token), no final
LayerNorm, another activation, non-square images or patches, extra arrays (a pooler, a mask token).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from .checkpoint import Checkpoint, _safetensors_numpy
from .config import ViTConfig
from .errors import CheckpointError

ACT_TO_NPVIT = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
ACT_FROM_NPVIT = {"none": "gelu", "tanh": "gelu_new"}
PROCESSOR = "preprocessor_config.json"

# npvit's name of each array of a block, and transformers' in its two spellings: on disk (the Hub's, which
# save_pretrained writes) and in memory (transformers 5's module names).
BLOCK = {
    "attention.output_projection": ("attention.output.dense", "attention.o_proj"),
    "layernorm_1": ("layernorm_before", "layernorm_before"),
    "mlp.dense_1": ("intermediate.dense", "mlp.fc1"),
    "mlp.dense_2": ("output.dense", "mlp.fc2"),
    "layernorm_2": ("layernorm_after", "layernorm_after"),
}
QKV = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
       ("attention.attention.value", "attention.v_proj"))
LAYER = ("vit.encoder.layer.{i}.", "vit.layers.{i}.")
TOP = {"embedding.cls_token": "vit.embeddings.cls_token",
       "embedding.position_embeddings": "vit.embeddings.position_embeddings",
       "embedding.patch_embeddings.projection.weight": "vit.embeddings.patch_embeddings.projection.weight",
       "embedding.patch_embeddings.projection.bias": "vit.embeddings.patch_embeddings.projection.bias",
       "layernorm.weight": "vit.layernorm.weight", "layernorm.bias": "vit.layernorm.bias",
       "classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}


# -- the config -------------------------------------------------------------------------------------------------
def _square(value, key):
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"transformers config {key} {list(value)} is not square; npvit's ViT takes square "
                                  f"images and patches")
        value = value[0]
    return value


def config_from_hf(c: dict) -> tuple:
    """(ViTConfig, class names) of a transformers ViT config (config.json as a dict); one line for what npvit
    cannot express."""
    if c.get("model_type") != "vit":
        raise CheckpointError(f"a transformers config of model_type {c.get('model_type')!r}: npvit reads 'vit' "
                              f"(ViTForImageClassification)")
    arch = c.get("architectures") or ["ViTForImageClassification"]
    if arch != ["ViTForImageClassification"]:
        raise CheckpointError(f"a transformers {arch[0]}: npvit reads ViTForImageClassification, the ViT with a "
                              f"classifier head")
    act = c.get("hidden_act", "gelu")
    if act not in ACT_TO_NPVIT:
        raise CheckpointError(f"transformers hidden_act {act!r}: npvit's GELU is exact ('gelu') or the tanh form "
                              f"('gelu_new', 'gelu_pytorch_tanh')")
    labels = c.get("id2label") or {}
    n = len(labels) if labels else int(c.get("num_labels", 2))
    classes = [labels.get(str(i), labels.get(i, f"LABEL_{i}")) for i in range(n)] if labels else \
        [f"LABEL_{i}" for i in range(n)]
    try:
        config = ViTConfig(patch_size=_square(c.get("patch_size", 16), "patch_size"),
                           hidden_size=c.get("hidden_size", 768), num_hidden_layers=c.get("num_hidden_layers", 12),
                           num_attention_heads=c.get("num_attention_heads", 12),
                           intermediate_size=c.get("intermediate_size", 3072),
                           hidden_dropout_prob=c.get("hidden_dropout_prob", 0.0),
                           attention_probs_dropout_prob=c.get("attention_probs_dropout_prob", 0.0),
                           initializer_range=c.get("initializer_range", 0.02),
                           image_size=_square(c.get("image_size", 224), "image_size"), num_classes=n,
                           num_channels=c.get("num_channels", 3), qkv_bias=c.get("qkv_bias", True),
                           gelu_approximate=ACT_TO_NPVIT[act], final_layernorm=True, pooling="cls",
                           layer_norm_eps=c.get("layer_norm_eps", 1e-12))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"transformers config: {e}") from None
    return config, classes


def config_to_hf(config: ViTConfig, classes) -> dict:
    """The config.json of a ViTForImageClassification that computes what npvit's ``config`` does, or one line
    naming what transformers' ViT cannot express."""
    if config.pooling != "cls":
        raise CheckpointError(f"this model pools the {config.pooling} of the patch tokens (pooling "
                              f"{config.pooling!r}); transformers' ViTForImageClassification classifies the [CLS] "
                              f"token, so it cannot hold it")
    if not config.final_layernorm:
        raise CheckpointError("this model has no final LayerNorm (final_layernorm false, the article's); "
                              "transformers' ViT always ends with one, so it cannot hold it")
    if len(classes) != config.num_classes:
        raise ValueError(f"{len(classes)} class names for {config.num_classes} classes")
    return {"architectures": ["ViTForImageClassification"], "model_type": "vit",
            "hidden_size": config.hidden_size, "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads, "intermediate_size": config.intermediate_size,
            "hidden_act": ACT_FROM_NPVIT[config.gelu_approximate],
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
            "initializer_range": config.initializer_range, "layer_norm_eps": config.layer_norm_eps,
            "image_size": config.image_size, "patch_size": config.patch_size, "num_channels": config.num_channels,
            "qkv_bias": config.qkv_bias, "encoder_stride": config.patch_size,
            "id2label": {str(i): name for i, name in enumerate(classes)},
            "label2id": {name: i for i, name in enumerate(classes)}}


def processor_config(config: ViTConfig, mean, std) -> dict:
    """preprocessor_config.json of transformers' ViTImageProcessor: resize to the model's size, scale to [0, 1],
    normalise with npvit's mean and std."""
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "resample": 2,
            "size": {"height": config.image_size, "width": config.image_size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(map(float, mean)),
            "image_std": list(map(float, std)), "do_convert_rgb": config.num_channels == 3}


# -- the weights -----------------------------------------------------------------------------------------------
def _spelling(state):
    for s, prefix in enumerate(LAYER):
        if any(k.startswith(prefix.format(i=0)) for k in state):
            return s
    return 0


def state_from_hf(state: dict, config: ViTConfig) -> dict:
    """npvit's state dict (article names, host arrays) from a transformers ViT's, in either spelling (the
    Hub's on disk, transformers 5's in memory); every array used once, or one line naming the rest."""
    left = {k: _host(v) for k, v in state.items()}
    s = _spelling(left)

    def take(name):
        if name not in left:
            raise CheckpointError(f"the transformers weights lack {name}")
        return left.pop(name)
    out = {ours: take(theirs) for ours, theirs in TOP.items()}
    for i in range(config.num_hidden_layers):
        hf, ours = LAYER[s].format(i=i), f"encoder.blocks.{i}."
        kinds = ("weight", "bias") if config.qkv_bias else ("weight",)
        for kind in kinds:                            # Q rows, K rows, V rows: the fused projection
            out[ours + "attention.qkv_projection." + kind] = np.concatenate(
                [take(f"{hf}{names[s]}.{kind}") for names in QKV])
        for npvit_name, names in BLOCK.items():
            for kind in ("weight", "bias"):
                out[f"{ours}{npvit_name}.{kind}"] = take(f"{hf}{names[s]}.{kind}")
    if left:
        raise CheckpointError(f"the transformers weights hold arrays npvit's ViT has no place for: "
                              f"{', '.join(sorted(left)[:4])}{', ...' if len(left) > 4 else ''}")
    return out


def state_to_hf(params: dict, config: ViTConfig, spelling=0) -> dict:
    """A transformers ViTForImageClassification's state dict from npvit's, in the Hub's spelling (0: what
    save_pretrained writes and from_pretrained reads) or transformers 5's in memory (1: its load_state_dict)."""
    D, s = config.hidden_size, spelling
    out = {theirs: params[ours] for ours, theirs in TOP.items()}
    for i in range(config.num_hidden_layers):
        hf, ours = LAYER[s].format(i=i), f"encoder.blocks.{i}."
        for kind in (("weight", "bias") if config.qkv_bias else ("weight",)):
            qkv = params[ours + "attention.qkv_projection." + kind]
            for j, names in enumerate(QKV):
                out[f"{hf}{names[s]}.{kind}"] = qkv[j * D:(j + 1) * D]
        for npvit_name, names in BLOCK.items():
            for kind in ("weight", "bias"):
                out[f"{hf}{names[s]}.{kind}"] = params[f"{ours}{npvit_name}.{kind}"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _host(v):
    if hasattr(v, "detach"):            # a torch tensor, without importing torch
        v = v.detach().cpu().numpy()
    return np.asarray(v)


# -- directories and models ------------------------------------------------------------------------------------
def is_hf_dir(path) -> bool:
    """Whether ``path`` is a directory as transformers' save_pretrained writes one (config.json with a
    model_type)."""
    config = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def read_hf(path) -> Checkpoint:
    """The Checkpoint record of a transformers ViTForImageClassification directory: its config, weights,
    class names, and the normalisation of its preprocessor_config.json (or transformers' ViT default, mean
    and std 0.5, named in ``meta["assumed"]`` when the directory has none)."""
    path = os.fspath(path)
    config, classes = config_from_hf(_read_json(os.path.join(path, "config.json")))
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        others = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".index.json")))
        raise CheckpointError(f"{path} has no model.safetensors" + (f" (it has {', '.join(others)}: npvit reads "
                              f"safetensors only, never pickled .bin files; save with safe_serialization)"
                              if others else ""))
    st = _safetensors_numpy()
    try:
        state = st.load_file(weights)
    except Exception as e:      # the safetensors parser raises its own error types
        raise CheckpointError(f"{weights} is not a readable .safetensors file ({type(e).__name__}: {e})") from None
    params = state_from_hf(state, config)
    meta = {"classes": classes, "dtype": "float64" if params["classifier.weight"].dtype == np.float64 else "float32"}
    processor = os.path.join(path, PROCESSOR)
    if os.path.isfile(processor):
        p = _read_json(processor)
        normalise = p.get("do_normalize", True)
        meta["mean"] = list(p.get("image_mean", [0.5] * 3)) if normalise else [0.0] * config.num_channels
        meta["std"] = list(p.get("image_std", [0.5] * 3)) if normalise else [1.0] * config.num_channels
        if p.get("do_rescale", True) is False or abs(p.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
            raise CheckpointError(f"{processor}: npvit scales pixels by 1/255 before normalising; this processor "
                                  f"rescales otherwise")
    else:
        meta["mean"], meta["std"] = [0.5] * config.num_channels, [0.5] * config.num_channels
        meta["assumed"] = ["mean", "std"]
    return Checkpoint(config, params, {}, meta, {})


def from_hf(model, backend="numpy", dtype="float32"):
    """(npvit ViT, meta with its classes) from a transformers ViTForImageClassification in memory."""
    from .model import ViT

    config, classes = config_from_hf(model.config.to_dict())
    vit = ViT(config, backend=backend, dtype=dtype)
    vit.load_state_dict(state_from_hf(model.state_dict(), config))
    return vit, {"classes": classes}


def save_hf(model, out_dir, classes, mean, std, dtype=None):
    """Write ``model`` (an npvit ViT) as a transformers ViTForImageClassification directory: config.json,
    model.safetensors and preprocessor_config.json (``mean``, ``std``: the normalisation it was trained with),
    written whole into a new directory beside ``out_dir`` and renamed into place. ``out_dir`` must not exist or
    be empty."""
    hf_config = config_to_hf(model.config, classes)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise CheckpointError(f"{out_dir} already exists and is not an empty directory: choose a new one")
    params = {k: (v.astype(dtype) if dtype else v) for k, v in model.state_dict().items()}
    hf_config["dtype"] = str(next(iter(params.values())).dtype)
    st = _safetensors_numpy()
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-hf-", dir=parent)
    try:
        st.save_file(state_to_hf(params, model.config), os.path.join(tmp, "model.safetensors"),
                     metadata={"format": "pt"})
        for name, data in (("config.json", hf_config), (PROCESSOR, processor_config(model.config, mean, std))):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)                   # empty: checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def to_hf(model, classes=None):
    """A transformers ViTForImageClassification with ``model``'s weights (float32 or float64, as the model)."""
    try:
        import torch
        from transformers import ViTConfig as HFConfig, ViTForImageClassification
    except ImportError:
        raise ImportError("to_hf needs transformers and torch: pip install transformers torch") from None
    classes = classes or [f"LABEL_{i}" for i in range(model.config.num_classes)]
    c = config_to_hf(model.config, classes)
    c = {k: v for k, v in c.items() if k not in ("architectures", "model_type")}
    c["id2label"] = {int(k): v for k, v in c["id2label"].items()}
    hf = ViTForImageClassification(HFConfig(**c))
    state = state_to_hf(model.state_dict(), model.config, spelling=_spelling(hf.state_dict()))
    hf.to(torch.float64 if model.dtype == np.float64 else torch.float32)
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"transformers' ViT did not take npvit's weights: missing {missing}, "
                              f"unexpected {unexpected}")
    return hf.eval()

