"""The Vision Transformer (Dosovitskiy et al. 2020) of the article, top to bottom in one file.

    images (B, C, H, W)
      -> embedding: patches (im2col + GEMM), [CLS] prepended, + position embeddings   (B, N, D)
      -> encoder: L pre-norm blocks (attention, MLP, residuals)                          (B, N, D)
      -> [optional final LayerNorm] -> classifier on the [CLS] token                    (B, K)
         (or, with pooling="mean", on the average of the patch tokens)

Parameter names are those of the article's PyTorch ``ViTForClassfication``, so
its ``state_dict`` loads here and ours loads there.
"""
from __future__ import annotations

import re

import numpy as np

from .backend import check_dtype, get_array_module, get_xp, host_array, to_device, to_numpy
from .config import ViTConfig
from .layers import Conv2d, Embeddings, Encoder, LayerNorm, Linear, PatchDropout
from .layers.base import Layer

PER_HEAD_KEY = re.compile(r"^encoder\.blocks\.(\d+)\.attention\.heads\.(\d+)\.(query|key|value)\.(weight|bias)$")


class ViT(Layer):
    """ViT(config, backend="numpy"|"cupy", dtype="float32"|"float64", seed=0,
    kernels="auto" or a registered set's name or a KernelSet, init="article"|"torch").

    ``model(x)`` -> logits (B, K); ``model.backward(dlogits)`` -> dx (B, C, H, W),
    with every parameter gradient added into ``model.gradients()`` (views into one flat
    buffer, ``model.flat.grads``). ``seed`` sets the weights and the dropout streams
    (``model.reseed(seed)`` sets the latter again). To run batches as shards on several
    CPU threads, wrap the model: ``npvit.DataParallel(model, threads=2)``. ``kernels`` picks the
    implementation of every layer's math, each the same function: one of the sets registered in
    npvit/ops/__init__.py (``npvit.ops.NAMED``); "auto" (default) is the fastest that runs here. ``init``: the article's initialisation (weight
    matrices N(0, 0.02), [CLS] and positions truncated normal) or PyTorch's module defaults
    (``torch_default_init``).
    """

    def __init__(self, config=None, backend="numpy", dtype="float32", seed=0, kernels="auto", init="article"):
        super().__init__()
        if config is None:
            config = ViTConfig()
        elif isinstance(config, dict):
            config = ViTConfig.from_dict(config)
        elif not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig or a dict, got {type(config).__name__}")
        self.config = config
        get_xp(backend)                         # validate now: unknown backend / no CuPy fail here
        self.backend = backend
        self.dtype = check_dtype(dtype)
        c = config
        rng = np.random.default_rng(seed)       # host RNG: the same seed gives the same weights on every backend
        std = c.initializer_range
        self.embedding = Embeddings(c.image_size, c.patch_size, c.num_channels, c.hidden_size,
                                    c.hidden_dropout_prob, rng=rng, std=std, patch_overlap=c.patch_overlap)
        self.encoder = Encoder(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size,
                               c.qkv_bias, c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                               c.gelu_approximate, rng=rng, std=std, drop_path_rate=c.drop_path_rate,
                               eps=c.layer_norm_eps)
        self.layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps) if c.final_layernorm else None
        self.classifier = Linear(c.hidden_size, c.num_classes, rng=rng, std=std)
        # Only when asked for, and last: a model without it keeps its layers (and their dropout seeds) as they were.
        self.patch_dropout = PatchDropout(c.patch_dropout) if c.patch_dropout > 0 else None
        if init == "torch":
            torch_default_init(self, rng)
        elif init != "article":
            raise ValueError(f"unknown init {init!r}; choose 'article' or 'torch'")
        self.flatten(self.dtype, self.xp)          # one array of parameters, one of gradients (self.flat), on the device
        self.use_kernels(kernels, backend)
        self.reseed(seed)

    def draw_on_device(self, on=True):
        """Draw the dropouts' random numbers from counters in device memory (npvit/ops/cuda_random.py, one stream
        per random layer, keyed by its seed), which a captured CUDA graph advances at each replay; off: from
        xp's Generators again. The masks differ from the Generators' (another formula), not their law. Needs
        numba-cuda (under its CUDA simulator on NumPy arrays). Returns self."""
        from .ops.cuda_random import CounterGenerator

        for _, layer in self.named_layers():
            if hasattr(layer, "device_random"):
                layer.device_random, layer.rng = (CounterGenerator(self.xp) if on else None), None
        return self

    def start_random_streams(self):
        """Start each device stream at its layer's seed now, from the host: before a captured step is launched,
        since a graph runs no Python (a no-op without draw_on_device)."""
        for _, layer in self.named_layers():
            if getattr(layer, "device_random", None) is not None and layer.p > 0:    # p = 0 draws nothing
                layer.generator(self.xp)
        return self

    def set_patch_dropout(self, p):
        """Set the share of patch tokens each training image leaves out (a rate that changes over a run); the
        model must have been built with patch dropout (``patch_dropout > 0``). Returns self."""
        if self.patch_dropout is None:
            raise ValueError("this model was built without patch dropout (patch_dropout = 0); build it with a rate "
                             "> 0 to change the rate later")
        if not 0 <= p < 1:
            raise ValueError(f"the patch-dropout rate must be in [0, 1), got {p!r}")
        self.patch_dropout.p = float(p)
        return self

    @property
    def xp(self):
        """The array module (numpy or cupy) the model's arrays live on."""
        return get_xp(self.backend)

    # -- forward / backward -------------------------------------------------
    def check_input(self, x):
        c, xp = self.config, self.xp
        if not isinstance(x, xp.ndarray):
            where = "a NumPy array" if isinstance(x, np.ndarray) else type(x).__name__
            raise TypeError(f"input must be a {xp.__name__} array on the model's device ({self.backend}), "
                            f"got {where}; use npvit.backend.to_device(x, model.xp)")
        if x.dtype.kind != "f":
            raise TypeError(f"input must be floating point (normalised images), got dtype {x.dtype}")
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the model's {self.dtype}; "
                            f"cast it with x.astype('{self.dtype}')")
        expected = (c.num_channels, c.image_size, c.image_size)
        if x.ndim != 4:
            raise ValueError(f"input must be (B, C, H, W) = (B, {', '.join(map(str, expected))}), "
                             f"got rank {x.ndim} shape {x.shape}")
        if x.shape[1] != c.num_channels:
            raise ValueError(f"input has {x.shape[1]} channels, the model expects num_channels={c.num_channels}")
        if x.shape[2:] != expected[1:]:
            raise ValueError(f"input images are {x.shape[2]}x{x.shape[3]}, the model expects "
                             f"image_size={c.image_size} ({c.image_size}x{c.image_size})")
        if len(x) == 0:
            raise ValueError(f"input is an empty batch {x.shape}: give at least one image")

    def forward(self, x, return_attention=False):
        """x (B, C, H, W) -> logits (B, K); with return_attention also the L maps att (B, H, N, N).

        With [CLS] pooling the classifier reads that token alone, so the last block computes only its
        row (B, 1, D); for the attention maps, or mean pooling, every row is computed.
        """
        self.check_input(x)
        self.batch_size = len(x)
        blocks = self.encoder.blocks
        cls_only = self.config.pooling == "cls" and not return_attention
        h = self.embedding.forward(x)                            # (B, N, D): patches, [CLS], + positions
        if self.patch_dropout is not None:
            h = self.patch_dropout.forward(h)                    # (B, 1 + K, D) in training: K random patches
        for i, block in enumerate(blocks):
            h = block.forward(h, cls_only=cls_only and i == len(blocks) - 1)    # (B, N or 1, D)
        if self.layernorm is not None:
            h = self.layernorm.forward(h)
        self.h_shape = h.shape
        if self.config.pooling == "cls":
            pooled = h[:, 0]                                     # (B, D)
        else:                                                    # the mean of the patch tokens
            pooled = self.kernels.reduce_sum(h[:, 1:], 1) / (h.shape[1] - 1)   # (B, D)
        logits = self.classifier.forward(pooled)                 # (B, K)
        if return_attention:
            return logits, [block.attention.att for block in blocks]   # each (B, H, N, N), kept by the layer
        return logits

    def backward(self, dlogits, input_grad=True):
        """dlogits (B, K) -> dx (B, C, H, W); parameter gradients accumulate. ``input_grad`` False: no dx (None),
        and none of its cost (the patch embedding's dcols GEMM and col2im): training never reads it.
        The forward chain reversed:

            logits = classifier(h[:, 0])        dh[:, 0] = dlogits W_cls   (other tokens: 0), dW_cls, db_cls
              or classifier(mean_{n>=1} h[:, n])   dh[:, n] = dlogits W_cls / (N - 1) for n >= 1 ([CLS]: 0)
            h = layernorm(h)   (optional)       dh = layernorm backward
            h = block_L(...(block_1(h0)))       for each block, last first:
                x1 = x + attention(ln1(x))         dx1 = dy + ln2^T mlp^T dy
                y  = x1 + mlp(ln2(x1))             dx  = dx1 + ln1^T attention^T dx1
            h0 = [cls; patches W_p] + pos       dpos = sum_b dh0, dcls = sum_b dh0[:, 0],
                                                dpatches -> dW_p (im2col) and dx (col2im)
        """
        if not hasattr(self, "batch_size"):
            raise RuntimeError("backward called before forward")
        if dlogits.shape != (self.batch_size, self.config.num_classes):
            raise ValueError(f"dlogits must have the logits' shape {(self.batch_size, self.config.num_classes)}, "
                             f"got {dlogits.shape}")
        xp = get_array_module(dlogits)
        dpooled = self.classifier.backward(dlogits)              # (B, D)
        dh = xp.zeros(self.h_shape, dtype=dpooled.dtype)
        if self.config.pooling == "cls":
            dh[:, 0] = dpooled                                   # only token 0 reaches the classifier
        else:
            dh[:, 1:] = (dpooled / (self.h_shape[1] - 1))[:, None, :]   # each patch token's share of the mean
        if self.layernorm is not None:
            dh = self.layernorm.backward(dh)
        for block in reversed(self.encoder.blocks):
            dh = block.backward(dh)                              # (B, N, D)
        if self.patch_dropout is not None:
            dh = self.patch_dropout.backward(dh)                 # the dropped patches get 0
        return self.embedding.backward(dh, input_grad)           # (B, C, H, W), or None

    def astype(self, dtype):
        self.dtype = check_dtype(dtype)
        return super().astype(self.dtype)

    # -- PyTorch interop ----------------------------------------------------
    def state_dict(self) -> dict:
        """Host (NumPy) copies of every parameter under the article's PyTorch names."""
        return {k: to_numpy(v).copy() for k, v in self.parameters().items()}

    def grad_dict(self) -> dict:
        """Host (NumPy) copies of every gradient, same names as ``state_dict()``."""
        return {k: to_numpy(v).copy() for k, v in self.gradients().items()}

    def load_state_dict(self, state_dict: dict):
        """Copy weights in from ``state_dict`` (NumPy arrays or torch tensors).

        Accepts our fused names and the article's per-head spelling
        ``encoder.blocks.{i}.attention.heads.{h}.query.weight`` (and key/value,
        bias), which are stacked into ``qkv_projection`` as Q rows, K rows, V rows.
        Missing, unexpected or mis-shaped keys raise one ValueError naming them all.
        """
        sd = {k: host_array(v) for k, v in state_dict.items()}
        sd = self._fuse_per_head(sd)
        params = self.parameters()
        missing = [k for k in params if k not in sd]
        unexpected = [k for k in sd if k not in params]
        shapes = [f"{k}: expected {tuple(params[k].shape)}, got {tuple(sd[k].shape)}"
                  for k in params if k in sd and tuple(sd[k].shape) != tuple(params[k].shape)]
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        if shapes:
            problems.append("shape mismatch: " + "; ".join(shapes))
        if problems:
            raise ValueError("cannot load state_dict: " + " | ".join(problems))
        # In place, so optimisers holding these arrays keep seeing the model's weights.
        for name, p in params.items():
            p[...] = to_device(np.asarray(sd[name], dtype=self.dtype), self.xp)
        return self

    def _fuse_per_head(self, sd):
        """Stack the article's per-head query/key/value Linear weights into our fused qkv_projection."""
        found = {}
        for k in list(sd):
            m = PER_HEAD_KEY.match(k)
            if m:
                i, h, which, kind = int(m[1]), int(m[2]), m[3], m[4]
                found.setdefault((i, kind), {})[(which, h)] = sd.pop(k)
        H = self.config.num_attention_heads
        for (i, kind), parts in found.items():
            need = [(w, h) for w in ("query", "key", "value") for h in range(H)]
            absent = [f"encoder.blocks.{i}.attention.heads.{h}.{w}.{kind}" for w, h in need if (w, h) not in parts]
            extra = [f"encoder.blocks.{i}.attention.heads.{h}.{w}.{kind}" for w, h in parts if h >= H]
            if absent or extra:
                raise ValueError(f"cannot load per-head attention of block {i}: missing {absent}, "
                                 f"unexpected {extra} (the config has {H} heads)")
            sd[f"encoder.blocks.{i}.attention.qkv_projection.{kind}"] = np.concatenate([parts[n] for n in need])
        return sd


def torch_default_init(model, rng):
    """PyTorch's defaults, as the article's modules are before its ``_init_weights``: every nn.Linear and
    nn.Conv2d weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (``kaiming_uniform_(a=sqrt(5))`` and the bias
    rule), LayerNorm weight 1 and bias 0, the [CLS] token and position embeddings N(0, 1) (``torch.randn``)."""
    for _, layer in model.named_layers():
        if isinstance(layer, (Linear, Conv2d)):
            w = layer.params["weight"]
            bound = 1.0 / np.sqrt(w[0].size)                      # fan_in: Din, or C * k * k
            for p in layer.params.values():
                p[...] = rng.uniform(-bound, bound, p.shape)
        elif isinstance(layer, Embeddings):
            for name in ("cls_token", "position_embeddings"):
                p = layer.params[name]
                p[...] = rng.standard_normal(p.shape)
