"""Other libraries' ViTs in and out of npvit: Hugging Face transformers' (below) and timm's (at the end).

Hugging Face transformers' ViT in and out of npvit: ``ViTForImageClassification`` as ``save_pretrained``
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

from .backend import host_array
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
    classes = [labels.get(str(i), labels.get(i, f"LABEL_{i}")) for i in range(n)]
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


def _refuse_overlap(config: ViTConfig, library):
    if config.patch_overlap:
        raise CheckpointError(f"this model's patch windows overlap (patch_overlap {config.patch_overlap}); "
                              f"{library} cuts the image into tiles (kernel = stride = patch_size), so it cannot "
                              f"hold it (npvit's own --format safetensors can; --patch-overlap 0 trains a model "
                              f"without such windows)")


def config_to_hf(config: ViTConfig, classes) -> dict:
    """The config.json of a ViTForImageClassification that computes what npvit's ``config`` does, or one line
    naming what transformers' ViT cannot express."""
    _refuse_overlap(config, "transformers' ViT")
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
    left = {k: host_array(v) for k, v in state.items()}
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


def to_hf(model, classes=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """A transformers ViTForImageClassification with ``model``'s weights (in its dtype): :func:`save_hf` into a
    temporary directory, read back by transformers' own ``from_pretrained`` (needs transformers)."""
    try:
        from transformers import ViTForImageClassification
    except ImportError:
        raise ImportError("to_hf needs transformers (and torch): pip install -e \".[hf]\"") from None
    classes = classes or [f"LABEL_{i}" for i in range(model.config.num_classes)]
    with tempfile.TemporaryDirectory() as tmp:
        out = save_hf(model, os.path.join(tmp, "model"), classes, mean, std)
        return ViTForImageClassification.from_pretrained(out, dtype="auto").eval()



# -- timm ------------------------------------------------------------------------------------------------------
# timm's VisionTransformer, as ``timm.models.vision_transformer.VisionTransformer`` holds it: one fused qkv (the
# same Q, K, V row order as npvit's), ``norm`` the final LayerNorm (``final_norm``), ``head`` the classifier on
# the [CLS] token (``global_pool='token'``) or the mean of the patch tokens (``'avg'`` with ``fc_norm=False``).
TIMM_TOP = {"embedding.cls_token": "cls_token", "embedding.position_embeddings": "pos_embed",
            "embedding.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embedding.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
            "classifier.weight": "head.weight", "classifier.bias": "head.bias"}
TIMM_BLOCK = {"attention.qkv_projection": "attn.qkv", "attention.output_projection": "attn.proj",
              "layernorm_1": "norm1", "mlp.dense_1": "mlp.fc1", "mlp.dense_2": "mlp.fc2", "layernorm_2": "norm2"}
TIMM_ACT = {"none": "gelu", "tanh": "gelu_tanh"}


def is_timm_state(state) -> bool:
    """Whether a state dict is in timm's VisionTransformer names."""
    return "patch_embed.proj.weight" in state and "cls_token" in state


def state_from_timm(state: dict, config: ViTConfig) -> dict:
    """npvit's state dict from a timm VisionTransformer's (of the model ``config``); every array used once,
    or one line naming the rest (register tokens, layer scale, a norm after pooling, ...)."""
    left = {k: host_array(v) for k, v in state.items()}
    names = dict(TIMM_TOP)
    if not config.final_layernorm:
        del names["layernorm.weight"], names["layernorm.bias"]
    for i in range(config.num_hidden_layers):
        for ours, theirs in TIMM_BLOCK.items():
            for kind in ("weight", "bias"):
                if kind == "bias" and ours == "attention.qkv_projection" and not config.qkv_bias:
                    continue
                names[f"encoder.blocks.{i}.{ours}.{kind}"] = f"blocks.{i}.{theirs}.{kind}"
    missing = [theirs for theirs in names.values() if theirs not in left]
    if missing:
        raise CheckpointError(f"the timm weights lack {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''} "
                              f"(for npvit's {config.num_hidden_layers} blocks, final_layernorm "
                              f"{str(config.final_layernorm).lower()}, qkv_bias {str(config.qkv_bias).lower()})")
    out = {ours: left.pop(theirs) for ours, theirs in names.items()}
    if left:
        raise CheckpointError(f"the timm weights hold arrays npvit's ViT has no place for: "
                              f"{', '.join(sorted(left)[:4])}{', ...' if len(left) > 4 else ''}")
    return out


def state_to_timm(params: dict, config: ViTConfig) -> dict:
    """A timm VisionTransformer's state dict from npvit's (the model of :func:`timm_kwargs`)."""
    out = {}
    for ours, v in params.items():
        if ours.startswith("encoder.blocks."):
            i, rest = ours[len("encoder.blocks."):].split(".", 1)
            part, kind = rest.rsplit(".", 1)
            out[f"blocks.{i}.{TIMM_BLOCK[part]}.{kind}"] = v
        else:
            out[TIMM_TOP[ours]] = v
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def timm_kwargs(config: ViTConfig) -> dict:
    """The keyword arguments of a timm ``VisionTransformer`` that computes what npvit's ``config`` does (JSON:
    the LayerNorm's epsilon as ``norm_eps``, which :func:`make_timm` turns into timm's ``norm_layer``)."""
    _refuse_overlap(config, "timm's VisionTransformer")
    D, I = config.hidden_size, config.intermediate_size
    return {"img_size": config.image_size, "patch_size": config.patch_size, "in_chans": config.num_channels,
            "num_classes": config.num_classes, "global_pool": "token" if config.pooling == "cls" else "avg",
            "embed_dim": D, "depth": config.num_hidden_layers, "num_heads": config.num_attention_heads,
            "mlp_ratio": (I + 0.5) / D,                        # timm's int(D * mlp_ratio) is then exactly I
            "qkv_bias": config.qkv_bias, "class_token": True, "no_embed_class": False,
            "final_norm": config.final_layernorm, "fc_norm": False, "act_layer": TIMM_ACT[config.gelu_approximate],
            "norm_eps": config.layer_norm_eps}


def make_timm(kwargs: dict):
    """A timm VisionTransformer from :func:`timm_kwargs` (needs timm)."""
    import functools

    from timm.layers import LayerNorm
    from timm.models.vision_transformer import VisionTransformer
    kwargs = dict(kwargs)
    eps = kwargs.pop("norm_eps")
    return VisionTransformer(**kwargs, norm_layer=functools.partial(LayerNorm, eps=eps))


def config_from_timm(model) -> ViTConfig:
    """The ViTConfig of a timm VisionTransformer in memory, or one line naming what npvit cannot express."""
    def identity(part):                 # torch.nn.Identity, recognised without importing torch
        return part is None or type(part).__name__ == "Identity"

    def refuse(what):
        raise CheckpointError(f"this timm VisionTransformer has {what}, which npvit's ViT does not express")
    if type(model).__name__ != "VisionTransformer":
        raise CheckpointError(f"a timm {type(model).__name__}: npvit reads timm's VisionTransformer")
    if getattr(model, "num_reg_tokens", 0):
        refuse(f"{model.num_reg_tokens} register tokens")
    if not model.has_class_token or model.no_embed_class:
        refuse("no [CLS] token" if not model.has_class_token else "positions for the patches only (no_embed_class)")
    if model.global_pool not in ("token", "avg") or getattr(model, "attn_pool", None) is not None:
        refuse(f"global_pool {model.global_pool!r}")
    if model.global_pool == "avg" and getattr(model, "pool_include_prefix", False):
        refuse("the [CLS] token in its average (pool_include_prefix)")
    block = model.blocks[0]
    for name, part in (("layer scale (init_values)", getattr(block, "ls1", None)),
                       ("a norm after pooling (fc_norm)", model.fc_norm), ("a norm before the blocks (pre_norm)",
                                                                             model.norm_pre),
                       ("query/key norms (qk_norm)", getattr(block.attn, "q_norm", None)),
                       ("a norm inside attention (scale_attn_norm)", getattr(block.attn, "norm", None)),
                       ("a norm inside the MLP (scale_mlp_norm)", getattr(block.mlp, "norm", None)),
                       ("a norm after the patch embedding", getattr(model.patch_embed, "norm", None))):
        if not identity(part):
            refuse(name)
    if type(block.attn).__name__ != "Attention" or type(block.mlp).__name__ != "Mlp":
        refuse(f"{type(block.attn).__name__} attention and a {type(block.mlp).__name__} MLP (npvit: Attention, Mlp)")
    act = block.mlp.act                 # torch's GELU (exact or tanh), or timm's own GELU and GELUTanh
    approximate = {"GELU": getattr(act, "approximate", "none"), "GELUTanh": "tanh"}.get(type(act).__name__)
    if approximate not in ("none", "tanh"):
        refuse(f"a {type(act).__name__} activation (npvit: GELU, exact or tanh)")
    if block.attn.proj.bias is None or block.mlp.fc1.bias is None:
        refuse("projections without biases")
    size, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    if size[0] != size[1] or patch[0] != patch[1]:
        refuse(f"non-square images or patches ({size}, {patch})")
    final = not identity(model.norm)
    try:
        return ViTConfig(patch_size=patch[0], hidden_size=model.embed_dim, num_hidden_layers=len(model.blocks),
                         num_attention_heads=block.attn.num_heads, intermediate_size=block.mlp.fc1.out_features,
                         image_size=size[0], num_classes=model.num_classes,
                         num_channels=model.patch_embed.proj.in_channels, qkv_bias=block.attn.qkv.bias is not None,
                         gelu_approximate=approximate, final_layernorm=final,
                         pooling="cls" if model.global_pool == "token" else "mean", layer_norm_eps=block.norm1.eps)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"timm model: {e}") from None


def from_timm(model, backend="numpy", dtype="float32"):
    """An npvit ViT from a timm VisionTransformer in memory, with the same logits."""
    from .model import ViT

    config = config_from_timm(model)
    vit = ViT(config, backend=backend, dtype=dtype)
    vit.load_state_dict(state_from_timm(model.state_dict(), config))
    return vit


def to_timm(model):
    """A timm VisionTransformer with ``model``'s weights (in its dtype): :func:`save_timm` into a temporary file,
    read by timm's own ``load_checkpoint`` (needs timm)."""
    from timm.models import load_checkpoint

    timm_model = make_timm(timm_kwargs(model.config))
    if model.dtype == np.float64:
        timm_model.double()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_timm(model, os.path.join(tmp, "model.safetensors"))
        load_checkpoint(timm_model, path, strict=True)
    return timm_model.eval()


def save_timm(model, path, dtype=None, meta=None):
    """Write ``model``'s weights as a .safetensors of timm's names, with the VisionTransformer's keyword
    arguments in its metadata (``timm_kwargs``: ``make_timm(json.loads(...))`` builds it) and, for npvit to read
    it back as it was, ``meta``'s class names, mean and std (``npvit_meta``), atomically."""
    from .runfiles import atomic_write

    params = {k: (v.astype(dtype) if dtype else v) for k, v in model.state_dict().items()}
    st = _safetensors_numpy()
    blob = st.save(state_to_timm(params, model.config),
                   metadata={"format": "pt", "timm_kwargs": json.dumps(timm_kwargs(model.config)),
                             "npvit_meta": json.dumps({k: v for k, v in (meta or {}).items()
                                                       if k in ("classes", "mean", "std")})})
    atomic_write(path, lambda f: f.write(blob))
    return path


def config_from_timm_kwargs(kwargs: dict, where="timm_kwargs") -> ViTConfig:
    """The ViTConfig of :func:`timm_kwargs`' dict (a file written by ``npvit export --format timm``)."""
    try:
        D = kwargs["embed_dim"]
        return ViTConfig(patch_size=kwargs["patch_size"], hidden_size=D, num_hidden_layers=kwargs["depth"],
                         num_attention_heads=kwargs["num_heads"], intermediate_size=int(D * kwargs["mlp_ratio"]),
                         image_size=kwargs["img_size"], num_classes=kwargs["num_classes"],
                         num_channels=kwargs["in_chans"], qkv_bias=kwargs["qkv_bias"],
                         gelu_approximate={v: k for k, v in TIMM_ACT.items()}[kwargs["act_layer"]],
                         final_layernorm=kwargs["final_norm"],
                         pooling={"token": "cls", "avg": "mean"}[kwargs["global_pool"]],
                         layer_norm_eps=kwargs["norm_eps"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: damaged timm keyword arguments ({type(e).__name__}: {e})") from None
