# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of the article's Vision Transformer, piece by piece
#
# This notebook builds the ViT of *"Implementing Vision Transformer (ViT) from Scratch"* with npvit
# (patch 4, image 32, hidden 48, 4 layers, 4 heads, MLP 192) and follows **one batch of real
# CIFAR-10 images** through it, printing the shape of every array on the way: the dry run of
# *"Breaking Down Vision Transformers"*, done on real arrays. Then it loads the **trained weights
# that ship with npvit** and shows what the model sees: predictions, the confusion matrix, and
# attention maps.
#
# Every layer's math is in `npvit/ops/reference.py`, plain NumPy written to be read; the backward
# passes are the subject of `02_backprop.ipynb`. Shapes: B images, C channels, P patch side,
# N tokens (64 patches + [CLS]), D width, H heads, hs = D / H, I MLP width, K classes.

# %%
import os, sys
import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath("")))   # a clone used as it is: npvit is beside notebooks/
import npvit
from npvit.checkout import find_checkout
ROOT = find_checkout()                       # the checkout: its notebooks/ and reference/article_vit.py
sys.path.insert(0, ROOT)
import npvit.data
np.set_printoptions(precision=4, suppress=True, linewidth=110)
# %matplotlib inline

# %% [markdown]
# ## The images
#
# npvit ships the first 100 test images of CIFAR-10 (`notebooks/cifar10_sample.npz`, from this
# project's JPEG copy of the dataset) so the tour runs anywhere; where the whole test set is at hand
# (`NPVIT_CIFAR10_DIR`, or `../data`), the evaluation below uses all 10,000.

# %%
sample = np.load(os.path.join(ROOT, "notebooks", "cifar10_sample.npz"))
images, labels = sample["x"], sample["y"]          # uint8 (100, 3, 32, 32), int64 (100,)
classes = list(npvit.data.CIFAR10_CLASSES)
print("images", images.shape, images.dtype, "labels", labels.shape)

import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 8, figsize=(12, 1.9))
for ax, img, y in zip(axes, images, labels):
    ax.imshow(img.transpose(1, 2, 0)); ax.set_title(classes[y], fontsize=9); ax.axis("off")
plt.show()

# %% [markdown]
# ## The model
#
# `npvit.ViT` is `npvit/model.py`: embeddings, an encoder of pre-norm blocks, a classifier. Its
# parameters are named as the article's PyTorch `state_dict`, so weights go both ways. A model built
# with `kernels="reference"` runs the plain functions this tour shows.

# %%
model = npvit.ViT(npvit.ViTConfig(), kernels="reference", seed=0).eval()
print(model.config)
print(f"{model.num_parameters():,} parameters")
for name, p in list(model.parameters().items())[:8]:
    print(f"  {name:<45} {p.shape}")
print("  ...")

# %% [markdown]
# ## Normalised pixels, then patches
#
# The article's script scales pixels to [-1, 1]. The patch embedding is a convolution whose 4x4
# windows tile the image: im2col gathers each window into a row, and one GEMM projects the rows to
# D = 48 (`conv2d_forward` in `npvit/ops/composites.py`).

# %%
from npvit.ops.reference import REFERENCE as R
B = 8
x = (images[:B].astype(np.float32) / 255 - 0.5) / 0.5            # (B, C, H, W) = (8, 3, 32, 32)
cols = R.im2col(x, 4, 4, 4, 0)                                    # (B, H/P, W/P, C, P, P) = (8, 8, 8, 3, 4, 4)
print("x", x.shape, " im2col", cols.shape, " as rows", cols.reshape(B * 64, -1).shape)
proj = model.embedding.patch_embeddings.projection
y, _ = R.conv2d_forward(x, proj.params["weight"], proj.params["bias"], 4, 0)   # (B, D, 8, 8)
patches = y.reshape(B, 48, 64).transpose(0, 2, 1)                 # (B, Np, D) = (8, 64, 48)
print("patch embeddings", patches.shape)
assert np.allclose(patches, model.embedding.patch_embeddings.forward(x))

fig, axes = plt.subplots(8, 8, figsize=(3.2, 3.2))
for i, ax in enumerate(axes.ravel()):                              # image 0 cut into its 64 patches
    ax.imshow(images[0, :, (i // 8) * 4:(i // 8) * 4 + 4, (i % 8) * 4:(i % 8) * 4 + 4].transpose(1, 2, 0))
    ax.axis("off")
plt.show()

# %% [markdown]
# ## [CLS] and positions
#
# A learned [CLS] token goes in front of the 64 patch tokens, and a learned position embedding is
# added to every token: N = 65 tokens of width 48.

# %%
emb = model.embedding
tokens = np.concatenate([np.repeat(emb.params["cls_token"], B, axis=0), patches], axis=1)   # (B, N, D)
tokens = tokens + emb.params["position_embeddings"]
print("tokens", tokens.shape)
assert np.allclose(tokens, emb.forward(x))

# %% [markdown]
# ## One block, line by line
#
# `x1 = x + attention(layernorm_1(x))`, then `y = x1 + mlp(layernorm_2(x1))`. Attention projects
# every token to a query, a key and a value per head; each query's scores against every key,
# scaled by 1/√hs and softmaxed, weight the values.

# %%
block = model.encoder.blocks[0]
att = block.attention
h, _ = R.layernorm_forward(tokens, block.layernorm_1.params["weight"], block.layernorm_1.params["bias"])
print("layernorm_1", h.shape, " per token: mean", h[0, 0].mean().round(6), "std", h[0, 0].std().round(4))
qkv, _ = R.linear_forward(h, att.qkv_projection.params["weight"], att.qkv_projection.params["bias"])
print("qkv projection", qkv.shape)                                  # (B, N, 3D)
qkv = qkv.reshape(B, 65, 3, 4, 12).transpose(2, 0, 3, 1, 4)        # (3, B, H, N, hs)
q, k, v = qkv
print("q, k, v", q.shape)
scores = q @ k.swapaxes(-1, -2)                                     # (B, H, N, N)
probs = R.softmax_forward(scores, 12 ** -0.5)                       # softmax(scores / sqrt(hs)), rows sum to 1
print("scores", scores.shape, " row sums", probs.sum(-1)[0, 0, :3])
ctx = probs @ v                                                     # (B, H, N, hs)
ctx = ctx.transpose(0, 2, 1, 3).reshape(B, 65, 48)                  # (B, N, D): heads side by side
a, _ = R.linear_forward(ctx, att.output_projection.params["weight"], att.output_projection.params["bias"])
x1 = tokens + a                                                     # residual 1
h2, _ = R.layernorm_forward(x1, block.layernorm_2.params["weight"], block.layernorm_2.params["bias"])
m, _ = R.linear_forward(h2, block.mlp.dense_1.params["weight"], block.mlp.dense_1.params["bias"])
print("MLP hidden", m.shape)                                        # (B, N, I)
m, _ = R.gelu_forward(m)
m, _ = R.linear_forward(m, block.mlp.dense_2.params["weight"], block.mlp.dense_2.params["bias"])
out = x1 + m                                                        # residual 2
print("block output", out.shape)
assert np.allclose(out, block.forward(tokens), atol=1e-5)

fig, axes = plt.subplots(1, 4, figsize=(12, 2.9))
for head, ax in enumerate(axes):                                    # one colour scale for all four heads
    im = ax.imshow(probs[0, head], cmap="viridis", vmin=0, vmax=probs[0].max())
    ax.set_title(f"head {head}", fontsize=9); ax.set_xlabel("key token (answers)", fontsize=8)
    ax.set_ylabel("query token (asks)", fontsize=8)
fig.colorbar(im, ax=axes, fraction=0.02, pad=0.02, label="attention probability")
plt.suptitle(f"block 0's attention for image 0, before training: every value lies in "
             f"{probs[0].min():.4f}-{probs[0].max():.4f}, close to uniform (1/65 = {1 / 65:.4f})", fontsize=10)
plt.show()

# %% [markdown]
# ## The classifier
#
# After the four blocks the article's model reads the [CLS] token (`pooling="cls"`; npvit's
# recipes read the mean of the patch tokens after a final LayerNorm, `pooling="mean"`), and one
# Linear gives K = 10 logits. Untrained, every class is about equally likely.

# %%
logits = model.forward(x)                                           # (B, K)
p = np.exp(R.log_softmax(logits))
print("logits", logits.shape, " probabilities of image 0:", p[0])

# %% [markdown]
# ## The trained model that ships with npvit
#
# `npvit/weights/vit-cifar10.safetensors` (0.5 MB) holds the weights of a `--recipe full` run; its
# model card is in docs/training.md. `npvit predict IMAGE` and `npvit attention` use it when no checkpoint
# is given.

# %%
from npvit.inference import PRETRAINED, confusion_matrix, load_trained, predict_proba
trained, meta = load_trained(PRETRAINED)
print(trained.config.pooling, "pooling;", {k: meta[k] for k in ("recipe", "seed", "test_acc") if k in meta})
test_x, test_y, where = images, labels, "the 100 shipped sample images"
folder = os.environ.get("NPVIT_CIFAR10_DIR") or os.path.join(ROOT, "data")
if os.environ.get("NPVIT_CIFAR10_DIR") and not npvit.data.cifar10_present(npvit.data.cifar10_root(folder)):
    print(f"note: NPVIT_CIFAR10_DIR={folder} holds no cifar-10-batches-py/: using {where}")
if npvit.data.cifar10_present(npvit.data.cifar10_root(folder)):
    full = npvit.data.load_cifar10(folder, splits=("test",))
    test_x, test_y, where = full.x_test, full.y_test, "the 10,000 test images"
probs = predict_proba(trained, test_x, meta["mean"], meta["std"])
pred = probs.argmax(-1)
print(f"accuracy on {where}: {100 * (pred == test_y).mean():.2f}%")

# %%
fig, axes = plt.subplots(2, 8, figsize=(12, 3.6))
for i, ax in enumerate(axes.ravel()):
    ok = pred[i] == test_y[i]
    ax.imshow(test_x[i].transpose(1, 2, 0)); ax.axis("off")
    ax.set_title(f"true {classes[test_y[i]]}\npredicted {classes[pred[i]]} ({100 * probs[i].max():.0f}%)", fontsize=7,
                 color="green" if ok else "red")
plt.show()
cm = confusion_matrix(test_y, pred, 10)
fig, ax = plt.subplots(figsize=(5, 4.4))
im = ax.imshow(cm, cmap="Blues")
fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="images")
ax.set_xticks(range(10), classes, rotation=90, fontsize=8); ax.set_yticks(range(10), classes, fontsize=8)
for i in range(10):
    for j in range(10):
        ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=6, color="white" if cm[i, j] > cm.max() / 2 else "black")
ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title(f"confusion matrix, {where}", fontsize=9)
plt.show()

# %% [markdown]
# ## What the trained model attends to
#
# This model classifies from the mean of its patch tokens, so the maps show the attention each
# patch receives from the patch tokens, averaged over layers and heads, and its rollout through
# the layers (Abnar & Zuidema 2020); for a model that reads [CLS] (`pooling="cls"`, the article's)
# they would show [CLS]'s attention. `npvit attention` draws the same figure.

# %%
from npvit.visualize import attention_maps, upsample
xs = (test_x[:8].astype(np.float32) / 255 - np.array(meta["mean"], np.float32)[:, None, None]) \
     / np.array(meta["std"], np.float32)[:, None, None]
_, atts = trained(xs, return_attention=True)
maps = attention_maps(atts, trained.config.pooling)
fig, axes = plt.subplots(1 + len(maps), 8, figsize=(13, 5.2))
for j in range(8):
    axes[0, j].imshow(test_x[j].transpose(1, 2, 0))
    axes[0, j].set_title(f"true {classes[test_y[j]]}\npredicted {classes[pred[j]]}", fontsize=7,
                         color="green" if pred[j] == test_y[j] else "red")
    for i, (name, mp) in enumerate(maps.items(), start=1):
        axes[i, j].imshow(test_x[j].transpose(1, 2, 0))
        im = axes[i, j].imshow(upsample(mp[j:j + 1], 32)[0], cmap="jet", alpha=0.5)
        if j == 0:
            axes[i, j].set_ylabel(name, fontsize=8)
        if j == 7:
            fig.colorbar(im, ax=axes[i, :], fraction=0.015, pad=0.01, label="share of attention")
for ax in axes.ravel():
    ax.set_xticks([]); ax.set_yticks([])
plt.show()

# %% [markdown]
# ## How the shipped weights were trained
#
# The run that made them (`--recipe full`, seed 44, 100 epochs on 2 CPU cores) evaluated on the
# test set every 5 epochs; `benchmarks/results/accuracy.json` keeps its curve, with the other runs
# of the accuracy table in docs/accuracy.md.

# %%
import json
runs = json.load(open(os.path.join(ROOT, "benchmarks", "results", "accuracy.json")))["runs"]
run = min((r for r in runs if r["recipe"] == meta["recipe"] and r["seed"] == meta["seed"] and r["split"] == "test"),
          key=lambda r: abs(r["final"] - meta["test_acc"]))             # the run whose last epoch they are
epochs, minutes, acc = zip(*run["curve"])
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(epochs, [100 * a for a in acc], marker=".")
ax.axhline(100 * meta["test_acc"], color="0.6", ls="--", lw=1, label=f"the shipped weights: {100 * meta['test_acc']:.2f}%")
ax.set_xlabel("epoch"); ax.set_ylabel("test accuracy (%)"); ax.legend(fontsize=8)
ax.set_title(f"recipe {run['recipe']}, seed {run['seed']}: {run['minutes']:.0f} minutes on 2 CPU cores", fontsize=9)
plt.show()
