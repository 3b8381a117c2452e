"""Writes the three notebooks from the cells below and runs them, so that what GitHub shows is what they print.

    python notebooks/build.py              # all three, executed in place (a few minutes on 2 CPU cores)
    python notebooks/build.py 02           # only the ones whose name holds "02"

The cells live here, in plain Python, so that a change to a notebook is a reviewable diff; the suite
(tests/test_notebooks.py) runs the .ipynb files themselves top to bottom. Needs nbformat, nbclient and
ipykernel (the [test] extra).
"""
import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text):
    return nbformat.v4.new_code_cell(text.strip("\n"))


SETUP = code('''
import os, sys
import numpy as np

def find_checkout(folder):
    """The npvit checkout: this folder or one above it, else the one the installed npvit lives in."""
    folder = os.path.abspath(folder)
    while not os.path.isfile(os.path.join(folder, "notebooks", "cifar10_sample.npz")):
        if folder == os.path.dirname(folder):
            import npvit                     # pip install -e . from the checkout: it is where npvit is
            return os.path.dirname(os.path.dirname(os.path.abspath(npvit.__file__)))
        folder = os.path.dirname(folder)
    return folder

ROOT = find_checkout(os.getcwd())
sys.path.insert(0, ROOT)                     # npvit from this checkout, and tests/reference/article_vit.py
import npvit
import npvit.data
np.set_printoptions(precision=4, suppress=True, linewidth=110)
%matplotlib inline
''')

TOUR = [
    md('''
# A tour of the article's Vision Transformer, piece by piece

This notebook builds the ViT of *"Implementing Vision Transformer (ViT) from Scratch"* with npvit
(patch 4, image 32, hidden 48, 4 layers, 4 heads, MLP 192) and follows **one batch of real
CIFAR-10 images** through it, printing the shape of every array on the way: the dry run of
*"Breaking Down Vision Transformers"*, done on real arrays. Then it loads the **trained weights
that ship with npvit** and shows what the model sees: predictions, the confusion matrix, and
attention maps.

Every layer's math is in `npvit/ops/reference.py`, plain NumPy written to be read; the backward
passes are the subject of `02_backprop.ipynb`. Shapes: B images, C channels, P patch side,
N tokens (64 patches + [CLS]), D width, H heads, hs = D / H, I MLP width, K classes.
'''),
    SETUP,
    md('''
## The images

npvit ships the first 100 test images of CIFAR-10 (`notebooks/cifar10_sample.npz`, from this
project's JPEG copy of the dataset) so the tour runs anywhere; where the whole test set is at hand
(`NPVIT_CIFAR10_DIR`, or `../data`), the evaluation below uses all 10,000.
'''),
    code('''
sample = np.load(os.path.join(ROOT, "notebooks", "cifar10_sample.npz"))
images, labels = sample["x"], sample["y"]          # uint8 (100, 3, 32, 32), int64 (100,)
classes = list(npvit.data.CIFAR10_CLASSES)
print("images", images.shape, images.dtype, "labels", labels.shape)

import matplotlib.pyplot as plt
fig, axes = plt.subplots(1, 8, figsize=(12, 1.9))
for ax, img, y in zip(axes, images, labels):
    ax.imshow(img.transpose(1, 2, 0)); ax.set_title(classes[y], fontsize=9); ax.axis("off")
plt.show()
'''),
    md('''
## The model

`npvit.ViT` is `npvit/model.py`: embeddings, an encoder of pre-norm blocks, a classifier. Its
parameters are named as the article's PyTorch `state_dict`, so weights go both ways. A model built
with `kernels="reference"` runs the plain functions this tour shows.
'''),
    code('''
model = npvit.ViT(npvit.ViTConfig(), kernels="reference", seed=0).eval()
print(model.config)
print(f"{model.num_parameters():,} parameters")
for name, p in list(model.parameters().items())[:8]:
    print(f"  {name:<45} {p.shape}")
print("  ...")
'''),
    md('''
## Normalised pixels, then patches

The article's script scales pixels to [-1, 1]. The patch embedding is a convolution whose 4x4
windows tile the image: im2col gathers each window into a row, and one GEMM projects the rows to
D = 48 (`conv2d_forward` in `npvit/ops/composites.py`).
'''),
    code('''
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
'''),
    md('''
## [CLS] and positions

A learned [CLS] token goes in front of the 64 patch tokens, and a learned position embedding is
added to every token: N = 65 tokens of width 48.
'''),
    code('''
emb = model.embedding
tokens = np.concatenate([np.repeat(emb.params["cls_token"], B, axis=0), patches], axis=1)   # (B, N, D)
tokens = tokens + emb.params["position_embeddings"]
print("tokens", tokens.shape)
assert np.allclose(tokens, emb.forward(x))
'''),
    md('''
## One block, line by line

`x1 = x + attention(layernorm_1(x))`, then `y = x1 + mlp(layernorm_2(x1))`. Attention projects
every token to a query, a key and a value per head; each query's scores against every key,
scaled by 1/√hs and softmaxed, weight the values.
'''),
    code('''
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

fig, axes = plt.subplots(1, 4, figsize=(10, 2.6))
for head, ax in enumerate(axes):
    ax.imshow(probs[0, head], cmap="viridis"); ax.set_title(f"head {head}: (N, N)", fontsize=9); ax.axis("off")
plt.suptitle("block 0's attention probabilities for image 0, before training", fontsize=10)
plt.show()
'''),
    md('''
## The classifier

After the four blocks the article's model reads the [CLS] token (`pooling="cls"`; npvit's
recipes read the mean of the patch tokens after a final LayerNorm, `pooling="mean"`), and one
Linear gives K = 10 logits. Untrained, every class is about equally likely.
'''),
    code('''
logits = model.forward(x)                                           # (B, K)
p = np.exp(R.log_softmax(logits))
print("logits", logits.shape, " probabilities of image 0:", p[0])
'''),
    md('''
## The trained model that ships with npvit

`npvit/weights/vit-cifar10.safetensors` (0.5 MB) holds the weights of a `--recipe full` run; its
model card is in the README. `npvit predict IMAGE` and `npvit attention` use it when no checkpoint
is given.
'''),
    code('''
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
'''),
    code('''
fig, axes = plt.subplots(2, 8, figsize=(12, 3.6))
for i, ax in enumerate(axes.ravel()):
    ok = pred[i] == test_y[i]
    ax.imshow(test_x[i].transpose(1, 2, 0)); ax.axis("off")
    ax.set_title(f"{classes[pred[i]]}\\n({100 * probs[i].max():.0f}%)", fontsize=8, color="green" if ok else "red")
plt.show()
cm = confusion_matrix(test_y, pred, 10)
fig, ax = plt.subplots(figsize=(5, 4.4))
ax.imshow(cm, cmap="Blues")
ax.set_xticks(range(10), classes, rotation=90, fontsize=8); ax.set_yticks(range(10), classes, fontsize=8)
for i in range(10):
    for j in range(10):
        ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=6, color="white" if cm[i, j] > cm.max() / 2 else "black")
ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title(f"confusion matrix, {where}", fontsize=9)
plt.show()
'''),
    md('''
## What the trained model attends to

This model classifies from the mean of its patch tokens, so the maps show the attention each
patch receives from the patch tokens, averaged over layers and heads, and its rollout through
the layers (Abnar & Zuidema 2020); for a model that reads [CLS] (`pooling="cls"`, the article's)
they would show [CLS]'s attention. `npvit attention` draws the same figure.
'''),
    code('''
from npvit.visualize import attention_maps, upsample
xs = (test_x[:8].astype(np.float32) / 255 - np.array(meta["mean"], np.float32)[:, None, None]) \\
     / np.array(meta["std"], np.float32)[:, None, None]
_, atts = trained(xs, return_attention=True)
maps = attention_maps(atts, trained.config.pooling)
fig, axes = plt.subplots(1 + len(maps), 8, figsize=(12, 4.8))
for j in range(8):
    axes[0, j].imshow(test_x[j].transpose(1, 2, 0)); axes[0, j].set_title(classes[pred[j]], fontsize=8)
    for i, (name, mp) in enumerate(maps.items(), start=1):
        axes[i, j].imshow(test_x[j].transpose(1, 2, 0)); axes[i, j].imshow(upsample(mp[j:j + 1], 32)[0], cmap="jet", alpha=0.5)
        if j == 0:
            axes[i, j].set_ylabel(name, fontsize=8)
for ax in axes.ravel():
    ax.set_xticks([]); ax.set_yticks([])
plt.show()
'''),
]

BACKPROP = [
    md('''
# Backward by hand: every layer of the ViT, from the loss back to the pixels

For each operation: the forward, its backward in a few lines (the derivations of
`docs/backprop.md`, made runnable), npvit's reference function (`npvit/ops/reference.py`) on a
small input, the numerical gradient check as a table, and PyTorch's autograd on the same numbers
beside it. Three facts do all the work: the backward of Y = f(X) is the transposed Jacobian
applied to dY; if Y = X Wᵀ then dX = dY W and dW = dYᵀ X; a variable used twice (a residual) adds
its gradients.

Small odd shapes (B=2, N=5, D=12, H=3) make a transposition bug show. Everything is float64.
'''),
    SETUP,
    code('''
from npvit.gradcheck import check_pair, check_layer_gradients
from npvit.ops.reference import REFERENCE as R
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: the autograd columns are left out (pip install torch==2.13.0 to see them)")
rng = np.random.default_rng(0)
B, N, D, H, K = 2, 5, 12, 3, 7
hs = D // H

def autograd(fn, inputs, dy):
    """PyTorch's gradients of sum(dy * fn(*inputs)), as NumPy arrays (None without PyTorch)."""
    if torch is None:
        return None
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    out = fn(*ts)
    out.backward(torch.tensor(dy))
    return [t.grad.numpy() for t in ts]

def beside(names, ours, theirs):
    for name, a, b in zip(names, ours, theirs or [None] * len(ours)):
        line = f"  d{name:<6} ours {np.ravel(a)[:3]}"
        if b is not None:
            line += f"   autograd {np.ravel(b)[:3]}   max |diff| {np.abs(a - b).max():.1e}"
        print(line)
'''),
    md('''
## 1. The loss: softmax cross-entropy with label smoothing

Forward: p = softmax(z), target q = (1 − ε) onehot(y) + ε/K, L = −(1/B) Σ_b Σ_k q_bk log p_bk.
Backward: ∂(−Σ_k q_k log p_k)/∂z_j = p_j − q_j because q sums to 1, so

    dz = (softmax(z) − q) / B
'''),
    code('''
z, y = rng.standard_normal((B, K)), rng.integers(0, K, B)
loss, cache = R.cross_entropy_forward(z, y, 0.1)
dz = R.cross_entropy_backward(cache)
print("loss", float(loss))
print(check_pair(lambda z: (R.cross_entropy_forward(z, y, 0.1)[0][None], None), lambda d, c: dz * d[0], {"z": z},
                 title="cross-entropy").summary())
theirs = autograd(lambda t: torch.nn.functional.cross_entropy(t, torch.tensor(y), label_smoothing=0.1)[None], [z], np.ones(1))
beside(["z"], [dz], theirs)
'''),
    md('''
## 2. Linear: y = x Wᵀ + b

    dx = dy W,   dW = dyᵀ x,   db = Σ_rows dy

(`linear_forward` / `linear_backward` are written once, in `npvit/ops/composites.py`, over the
kernel set's GEMM; every kernel set runs the same lines.)
'''),
    code('''
x, w, b = rng.standard_normal((B, N, D)), rng.standard_normal((K, D)), rng.standard_normal(K)
report = check_pair(lambda x, w, b: R.linear_forward(x, w, b), lambda d, c: R.linear_backward(d, c, w),
                    {"x": x, "w": w, "b": b}, title="Linear")
print(report); print(report.summary())
dy = rng.standard_normal((B, N, K))
ours = R.linear_backward(dy, R.linear_forward(x, w, b)[1], w)
beside(["x", "w", "b"], ours, autograd(torch.nn.functional.linear, [x, w, b], dy) if torch else None)
'''),
    md('''
## 3. LayerNorm

Forward per token: μ = mean(x), xc = x − μ, var = mean(xc²), r = 1/√(var + ε), x̂ = xc r,
y = x̂ w + b. Backward through the intermediates (the cache keeps x̂ and r):

    dw = Σ dy x̂,  db = Σ dy,  dx̂ = dy w
    dxc = dx̂ r,  dr = Σ dx̂ xc,  dvar = dr (−½) r³,  dxc += dvar 2 xc / D,  dx = dxc − mean(dxc)

collected: dx = r (dx̂ − mean(dx̂) − x̂ mean(dx̂ x̂)). Forgetting that μ and var depend on x
(dx = dx̂ r) is the classic mistake; the check catches it (the second table).
'''),
    code('''
g, beta = 1 + 0.1 * rng.standard_normal(D), rng.standard_normal(D)
forward = lambda x, w, b: R.layernorm_forward(x, w, b)
print(check_pair(forward, lambda d, c: R.layernorm_backward(d, c, g), {"x": x, "w": g, "b": beta},
                 title="LayerNorm").summary())
def forgot_the_mean(d, c):
    dx, dw, db = R.layernorm_backward(d, c, g)
    return d * g * c.rstd, dw, db
print(check_pair(forward, forgot_the_mean, {"x": x, "w": g, "b": beta}, title="LayerNorm, dx = dxhat r").summary())
dy = rng.standard_normal(x.shape)
ours = R.layernorm_backward(dy, R.layernorm_forward(x, g, beta)[1], g)
beside(["x", "w", "b"], ours, autograd(lambda x, w, b: torch.nn.functional.layer_norm(x, (D,), w, b), [x, g, beta], dy)
       if torch else None)
'''),
    md('''
## 4. GELU

y = x · gate, gate = ½(1 + tanh u), u = √(2/π)(x + 0.044715 x³) (the article's tanh form).
The Jacobian is diagonal:

    dx = dy (gate + x dgate/dx),   dgate/dx = 2 gate (1 − gate) √(2/π)(1 + 3·0.044715 x²)
'''),
    code('''
print(check_pair(lambda x: R.gelu_forward(x), R.gelu_backward, {"x": 2 * x}, title="GELU (tanh)").summary())
ours = R.gelu_backward(dy, R.gelu_forward(2 * x)[1])
beside(["x"], [ours], autograd(lambda t: torch.nn.functional.gelu(t, approximate="tanh"), [2 * x], dy) if torch else None)
'''),
    md('''
## 5. Softmax

For one row of a = softmax(z): ∂a_i/∂z_j = a_i(δ_ij − a_j), so

    dz = a ⊙ (da − Σ_j da_j a_j)

One dot product per row; the N×N Jacobian is never formed.
'''),
    code('''
scores = rng.standard_normal((B, H, N, N))
def forward(scores):
    att = R.softmax_forward(scores)
    return att, att
print(check_pair(forward, lambda d, a: R.softmax_backward(d, a), {"scores": scores}, title="softmax").summary())
da = rng.standard_normal(scores.shape)
ours = R.softmax_backward(da, R.softmax_forward(scores))
beside(["s"], [ours], autograd(lambda t: torch.softmax(t, -1), [scores], da) if torch else None)
'''),
    md('''
## 6. The attention core

    s = q kᵀ,  a = softmax(s/√hs),  c = a v
    dv = aᵀ dc,  da = dc vᵀ,  ds = a ⊙ (da − Σ da ⊙ a) / √hs,  dq = ds k,  dk = dsᵀ q

All heads at once, as batched GEMMs over (B, H); `attention_backward` in
`npvit/ops/composites.py` is these lines.
'''),
    code('''
qkv = rng.standard_normal((3, B, H, N, hs))
print(check_pair(lambda qkv: R.attention_forward(qkv, hs ** -0.5), R.attention_backward, {"qkv": qkv},
                 title="attention core").summary())
dc = rng.standard_normal((B, H, N, hs))
ours = R.attention_backward(dc, R.attention_forward(qkv, hs ** -0.5)[1])
theirs = autograd(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v), list(qkv), dc) if torch else None
beside(["q", "k", "v"], list(ours), theirs)
'''),
    md('''
## 7. A whole block, and the patches

A block is `x1 = x + attention(ln1(x))`, `y = x1 + mlp(ln2(x1))`; by the third fact,

    dx1 = dy + ln2ᵀ(mlpᵀ(dy)),   dx = dx1 + ln1ᵀ(attentionᵀ(dx1))

(`npvit/layers/block.py`). The patch embedding is im2col and a GEMM; its backward is the GEMM's
and col2im, which adds each window's gradient back to its pixels.
'''),
    code('''
from npvit import layers as L
block = L.Block(D, H, 20, rng=np.random.default_rng(0), std=0.2)
print(check_layer_gradients(block, x, title="Block").summary())
conv = L.Conv2d(3, 4, 3, stride=2, padding=1, rng=np.random.default_rng(0), std=0.2)
print(check_layer_gradients(conv, rng.standard_normal((2, 3, 7, 7)), title="Conv2d k3 s2 p1").summary())
'''),
    md('''
## 8. The whole model, and ten training steps against the article's PyTorch code

The gradient check of every parameter of a small ViT by name; then the article's own
`ViTForClassfication` (`tests/reference/article_vit.py`) and npvit, from the same weights, take
ten AdamW steps on the same batches: their losses side by side.
'''),
    code('''
from npvit.gradcheck import check_model_gradients, small_vit_config
small = npvit.ViT(small_vit_config(), dtype="float64", seed=0)
report = check_model_gradients(small, rng.standard_normal((2, 3, 8, 8)), np.array([1, 3]))
print(report.summary())
'''),
    code('''
from npvit.optim import AdamW
from npvit.step import train_step
config = {**npvit.ViTConfig().to_dict(), "hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 40,
          "num_hidden_layers": 2}
ours = npvit.ViT(config, dtype="float64", seed=0)
opt = AdamW(ours, lr=3e-3, weight_decay=0.05)
if torch is not None:
    from tests.reference.article_vit import ViTForClassfication
    ref = ViTForClassfication(config).double()
    ref.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    topt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.05)
print("step   npvit loss            PyTorch loss")
batch_rng = np.random.default_rng(1)
for step in range(10):
    xb, yb = batch_rng.standard_normal((16, 3, 32, 32)), batch_rng.integers(0, 10, 16)
    loss, _ = train_step(ours, opt, xb, yb, yb)
    line = f"{step + 1:>4}   {float(loss):.15f}"
    if torch is not None:
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(ref(torch.tensor(xb))[0], torch.tensor(yb))
        tloss.backward(); topt.step()
        line += f"   {tloss.item():.15f}"
    print(line)
'''),
]

EXERCISES = [
    md('''
# Write it yourself: five backward passes, graded at once

Each exercise gives you a forward (npvit's reference, `npvit/ops/reference.py`) and asks for its
backward. Write it in the marked cell, run the next cell: `npvit.exercises.grade` checks your
gradients against finite differences of the forward, in float64, prints the table, and says
PASS, or FAIL naming the array whose gradient is wrong. Mistakes of form (a gradient of the wrong
shape, one missing) get one line saying what is wrong.

`docs/backprop.md` derives each one; the solutions are in `notebooks/solutions.py`: look only
after trying. You can grade your own pairs the same way with `npvit.gradcheck.check_pair`.
'''),
    SETUP,
    code('''
from npvit.exercises import grade
'''),
    md('''
## 1. LayerNorm

The forward normalises each token over its D features: xhat = (x − mean) · rstd,
rstd = 1/√(var + ε), y = xhat · w + b. The cache holds `xhat` and `rstd` (shape (..., 1)).
Return `(dx, dw, db)`. Remember that the mean and the variance depend on x too.
'''),
    code('''
def layernorm_backward(dy, cache, w):
    xhat, rstd = cache
    # YOUR CODE HERE: dx, dw, db
    raise NotImplementedError
'''),
    code('''
grade("layernorm", layernorm_backward)
'''),
    md('''
## 2. Softmax

`att = softmax(scores)` over the last axis. Given `datt`, return `dscores`. The Jacobian of one
row is diag(att) − att attᵀ; you do not need to build it.
'''),
    code('''
def softmax_backward(datt, att):
    # YOUR CODE HERE: dscores
    raise NotImplementedError
'''),
    code('''
grade("softmax", softmax_backward)
'''),
    md('''
## 3. GELU (tanh)

y = x · gate, gate = ½(1 + tanh u), u = √(2/π)(x + 0.044715 x³). The cache holds `x`, `gate`
and the form (`"tanh"`). Hint: ½(1 − tanh² u) = 2 · gate · (1 − gate).
'''),
    code('''
SQRT_2_OVER_PI, GELU_COEF = np.sqrt(2 / np.pi), 0.044715

def gelu_backward(dy, cache):
    x, gate, _ = cache
    # YOUR CODE HERE: dx
    raise NotImplementedError
'''),
    code('''
grade("gelu", gelu_backward)
'''),
    md('''
## 4. The attention core

qkv is (3, B, H, N, hs): q, k, v of every head. The forward: scores = q kᵀ,
att = softmax(scale · scores), ctx = att_dropped v (att_dropped is att when there is no dropout).
The cache: `qkv, att, att_dropped, mask, scale, num_queries`. Return dqkv, shaped like qkv.
'''),
    code('''
def attention_backward(dctx, cache):
    qkv, att, att_dropped, mask, scale, nq = cache
    q, k, v = qkv[0, :, :, :nq], qkv[1], qkv[2]
    # YOUR CODE HERE: dq, dk, dv, stacked into dqkv (3, B, H, N, hs)
    raise NotImplementedError
'''),
    code('''
grade("attention", attention_backward)
'''),
    md('''
## 5. A whole block

`x1 = x + block.attention(block.layernorm_1(x))`, `y = x1 + block.mlp(block.layernorm_2(x1))`.
Every sub-layer has its own `backward(dy)` (it returns dx and adds its parameter gradients).
Write the block's backward from them.
'''),
    code('''
def block_backward(block, dy):
    # YOUR CODE HERE: dx, through both residuals
    raise NotImplementedError
'''),
    code('''
grade("block", block_backward)
'''),
]

NOTEBOOKS = {"01_tour.ipynb": TOUR, "02_backprop.ipynb": BACKPROP, "03_exercises.ipynb": EXERCISES}


def build(name, cells, timeout=600):
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    for cell in nb.cells:                       # stable files: no execution timestamps in the diff
        cell.metadata.pop("execution", None)
    nbformat.write(nb, os.path.join(HERE, name))
    print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    wanted = sys.argv[1:]
    for name, cells in NOTEBOOKS.items():
        if not wanted or any(w in name for w in wanted):
            build(name, cells)
