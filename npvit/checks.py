"""What ``npvit gradcheck`` checks, in float64: every reference primitive and composite on its own (the
contract's cases, npvit/ops/cases.py), every layer of a small ViT alone, the loss, and the whole model on
every kernel set that runs here. The checking itself is npvit/gradcheck.py; this is the list of what to check.
"""
from __future__ import annotations

import numpy as np

from . import layers as L
from .config import ViTConfig
from .gradcheck import check_gradients, check_layer_gradients, check_model_gradients
from .losses import softmax_cross_entropy
from .model import ViT
from .ops import available_kernels
from .ops.cases import CASES, DIMS
from .ops.reference import REFERENCE as R


def check_reference_ops(seed=0):
    """Check every reference primitive and composite (npvit/ops/reference.py, composites.py) on its own, in
    float64: its backward against central differences of its forward, for every input it grades. The cases
    are the contract's catalogue (npvit/ops/cases.py), the one the kernel sets' tests walk too."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=1.0):
        return scale * rng.standard_normal(shape)

    reports = []
    for case in CASES:
        inputs = case.inputs(r, DIMS)
        y, cache = case.forward(R, **inputs)
        dy = rng.standard_normal(np.shape(y))                   # L = sum(dy * y) for a random dy
        grads = case.backward(R, dy, cache, **inputs)
        grads = grads if isinstance(grads, tuple) else (grads,)
        graded = {name: inputs[name] for name in case.graded}    # perturbed in place, so forward sees it
        # directions from another stream than the inputs': along u = x itself LayerNorm does not change
        reports.append(check_gradients(lambda: case.forward(R, **inputs)[0], graded, dict(zip(case.graded, grads)),
                                       r=dy, title=case.title, seed=seed + 1))
    return reports


def check_all(seed=0):
    """Check every layer of a small ViT alone (on the reference set, as a lone layer runs), the loss, every
    reference primitive and composite, then the whole model once on every kernel set that runs here.
    Returns the reports."""
    c = ViTConfig.tiny()
    rng = np.random.default_rng(seed)
    D, H, I, K = c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_classes
    B, N = 2, c.num_tokens
    images = rng.standard_normal((B, c.num_channels, c.image_size, c.image_size))
    tokens = rng.standard_normal((B, N, D))
    init = dict(rng=np.random.default_rng(seed), std=c.initializer_range)
    reports = [
        check_layer_gradients(L.Conv2d(3, 4, 3, stride=2, padding=1, **init), images, title="Conv2d k3 s2 p1 (im2col)"),
        check_layer_gradients(L.PatchEmbeddings(c.image_size, c.patch_size, 3, D, **init), images),
        check_layer_gradients(L.Embeddings(c.image_size, c.patch_size, 3, D, **init), images),
        check_layer_gradients(L.LayerNorm(D), tokens),
        check_layer_gradients(L.MultiHeadSelfAttention(D, H, **init), tokens),
        check_layer_gradients(L.GELU("tanh"), tokens, title="GELU (tanh)"),
        check_layer_gradients(L.GELU("none"), tokens, title="GELU (erf)"),
        check_layer_gradients(L.MLP(D, I, **init), tokens),
        check_layer_gradients(L.Block(D, H, I, **init), tokens),
        check_layer_gradients(L.Linear(D, K, **init), tokens[:, 0], title="Linear (classifier head)"),
    ]
    logits = rng.standard_normal((B, K))
    labels = rng.integers(0, K, size=B)
    _, dlogits = softmax_cross_entropy(logits, labels, 0.1)
    reports.append(check_gradients(lambda: softmax_cross_entropy(logits, labels, 0.1)[0], {"logits": logits},
                                   {"logits": dlogits}, title="softmax_cross_entropy (label smoothing 0.1)"))
    reports += check_reference_ops(seed)
    for kernels in available_kernels("numpy"):
        report = check_model_gradients(ViT(c, dtype="float64", seed=seed, kernels=kernels), images, labels)
        report.title = f"ViT (softmax cross-entropy), {kernels.name} kernels"
        reports.append(report)
    return reports
