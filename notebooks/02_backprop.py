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
# # Backward by hand: every line of the ViT's backward, checked
#
# In the spirit of makemore's "becoming a backprop ninja": each operation's forward is split into
# named intermediates, one line each; its backward is written below it, one line per intermediate
# in reverse order, each with its shape; then a table checks **every** intermediate's gradient
# against finite differences (each intermediate moved alone, the rest of the forward run from
# there) and, where PyTorch is installed, against autograd's `retain_grad()` on the same numbers
# (`exact` means bit for bit). A gradient check table of the whole operation follows, as npvit's
# own functions (`npvit/ops/reference.py`) compute it.
#
# Three facts do all the work: the backward of y = f(x) is the transposed Jacobian applied to dy;
# if y = x Wᵀ then dx = dy W and dW = dyᵀ x; a variable used twice adds its gradients. Small odd
# shapes (B=2, N=5, D=12, H=3) make a transposition bug show. Everything is float64.

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

# %%
from npvit.gradcheck import check_intermediates, check_layer_gradients, check_pair, run_steps
from npvit.ops.reference import REFERENCE as R
from npvit.visualize import plot_graph
import matplotlib.pyplot as plt
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: the autograd columns are left out (pip install torch to see them)")

# The forward's steps use these, so the same lines run on NumPy arrays and on PyTorch tensors.
def is_torch(a): return torch is not None and isinstance(a, torch.Tensor)
def mean(a, axis=-1): return a.mean(axis, keepdim=True) if is_torch(a) else a.mean(axis, keepdims=True)
def total(a, axis=-1): return a.sum(axis, keepdim=True) if is_torch(a) else a.sum(axis, keepdims=True)
def amax(a, axis=-1): return a.amax(axis, keepdim=True) if is_torch(a) else a.max(axis, keepdims=True)
def sqrt(a): return a.sqrt() if is_torch(a) else np.sqrt(a)
def exp(a): return a.exp() if is_torch(a) else np.exp(a)
def log(a): return a.log() if is_torch(a) else np.log(a)
def tanh(a): return a.tanh() if is_torch(a) else np.tanh(a)
def T(a): return a.transpose(-1, -2) if is_torch(a) else a.swapaxes(-1, -2)

def autograd(steps, inputs):
    """PyTorch's gradient of the last step (the loss) with respect to every input and intermediate."""
    if torch is None:
        return None
    leaves = {k: torch.tensor(v, requires_grad=np.asarray(v).dtype.kind == "f") for k, v in inputs.items()}
    env = run_steps(steps, leaves)
    for v in env.values():
        if v.requires_grad and not v.is_leaf:
            v.retain_grad()
    env[steps[-1][0]].backward()
    return {k: v.grad.numpy() for k, v in env.items() if v.grad is not None}

rng = np.random.default_rng(0)
B, N, D, H, K = 2, 5, 12, 3, 7
hs = D // H

# %% [markdown]
# ## 1. The loss: softmax cross-entropy with label smoothing
#
# Target q = (1 − ε) onehot(y) + ε/K; loss = −(1/B) Σ_b Σ_k q_bk log p_bk with p = softmax(z),
# computed the stable way (subtract each row's max first). Every intermediate gets its gradient,
# the max included: its gradient sums to zero, because softmax does not change when a constant is
# added to a row.

# %%
z, labels = rng.standard_normal((B, K)), rng.integers(0, K, B)
q = 0.9 * np.eye(K)[labels] + 0.1 / K                            # (B, K) smoothed targets
loss_steps = [
    ("zmax", lambda e: amax(e["z"])),                             # (B, 1)
    ("zc",   lambda e: e["z"] - e["zmax"]),                       # (B, K)
    ("ex",   lambda e: exp(e["zc"])),                             # (B, K)
    ("s",    lambda e: total(e["ex"])),                           # (B, 1)
    ("logp", lambda e: e["zc"] - log(e["s"])),                    # (B, K)
    ("loss", lambda e: -(e["q"] * e["logp"]).sum() / B),          # ()
]
env = run_steps(loss_steps, {"z": z, "q": q})

# %%
ex, s, logp = env["ex"], env["s"], env["logp"]
dlogp = -q / B                                                    # (B, K)  loss = -sum(q logp) / B
dzc = dlogp.copy()                                                # (B, K)  logp = zc - log s: the zc term
ds = -dlogp.sum(1, keepdims=True) / s                             # (B, 1)  ... and the log s term
dex = ds * np.ones_like(ex)                                       # (B, K)  s = sum of ex over the row
dzc += dex * ex                                                   # (B, K)  ex = exp(zc): zc's second use adds
dzmax = -dzc.sum(1, keepdims=True)                                # (B, 1)  zc = z - zmax
dz = dzc + dzmax * (z == env["zmax"])                             # (B, K)  zmax = max(z): to the row's max
print(check_intermediates(loss_steps, {"z": z, "q": q},
                          {"logp": dlogp, "s": ds, "ex": dex, "zc": dzc, "zmax": dzmax, "z": dz},
                          autograd(loss_steps, {"z": z, "q": q}), title="cross-entropy, line by line"))
print("collected: dz = (softmax(z) - q) / B:", np.allclose(dz, (np.exp(logp) - q) / B))

# %%
report = check_pair(lambda z: R.cross_entropy_forward(z, labels, 0.1), lambda d, c: d * R.cross_entropy_backward(c),
                    {"z": z}, title="npvit's cross_entropy_forward/backward")
print(report); print(report.summary())

# %% [markdown]
# ## 2. Linear: y = x Wᵀ + b
#
# Every leading axis of x folds into rows; the bias is added to every row, so its gradient sums
# over the rows. (`linear_forward` / `linear_backward` are written once, in
# `npvit/ops/composites.py`, over the kernel set's GEMM.)

# %%
x, w, b = rng.standard_normal((B, N, D)), rng.standard_normal((K, D)), rng.standard_normal(K)
r = rng.standard_normal((B, N, K))                                # L = sum(r * y): dy = r
linear_steps = [("y", lambda e: e["x"] @ T(e["w"]) + e["b"]),     # (B, N, K)
                ("L", lambda e: (e["r"] * e["y"]).sum())]
dy = r                                                            # (B, N, K)
dx = dy @ w                                                       # (B, N, D)   y = x Wᵀ
dw = dy.reshape(-1, K).T @ x.reshape(-1, D)                       # (K, D)      every row adds its outer product
db = dy.reshape(-1, K).sum(0)                                     # (K,)        b is in every row
inputs = {"x": x, "w": w, "b": b, "r": r}
print(check_intermediates(linear_steps, inputs, {"y": dy, "x": dx, "w": dw, "b": db}, autograd(linear_steps, inputs),
                          title="Linear, line by line"))
report = check_pair(lambda x, w, b: R.linear_forward(x, w, b), lambda d, c: R.linear_backward(d, c, w),
                    {"x": x, "w": w, "b": b}, title="npvit's linear_forward/backward")
print(report); print(report.summary())

# %% [markdown]
# ## 3. LayerNorm
#
# Per token: mean, the centred xc, the variance, rstd = 1/√(var + ε), x̂ = xc · rstd, y = x̂ w + b.
# The graph below is the forward, with every array's shape on its edges; the backward walks each
# edge the other way, and where an array feeds two nodes (x feeds the mean and xc; xc feeds the
# variance and x̂) the two gradients add. Forgetting that the mean and the variance depend on x
# (dx = dx̂ · rstd) is the classic mistake.

# %%
fig, ax = plt.subplots(figsize=(11, 2.6))
plot_graph([("x", "", [], "(B, N, D)"), ("w", "", [], "(D,)"), ("b", "", [], "(D,)"),
            ("mean", "mean over D", ["x"], "(B, N, 1)"), ("xc", "x − mean", ["x", "mean"], "(B, N, D)"),
            ("var", "mean of xc²", ["xc"], "(B, N, 1)"), ("rstd", "1/√(var + ε)", ["var"], "(B, N, 1)"),
            ("xhat", "xc · rstd", ["xc", "rstd"], "(B, N, D)"), ("y", "xhat · w + b", ["xhat", "w", "b"], "(B, N, D)")],
           ax=ax, title="LayerNorm's forward; its backward runs every arrow the other way")
plt.show()

# %%
g, beta, r = 1 + 0.1 * rng.standard_normal(D), rng.standard_normal(D), rng.standard_normal((B, N, D))
ln_steps = [
    ("mean", lambda e: mean(e["x"])),                             # (B, N, 1)
    ("xc",   lambda e: e["x"] - e["mean"]),                       # (B, N, D)
    ("var",  lambda e: mean(e["xc"] * e["xc"])),                  # (B, N, 1)
    ("rstd", lambda e: 1.0 / sqrt(e["var"] + 1e-5)),              # (B, N, 1)
    ("xhat", lambda e: e["xc"] * e["rstd"]),                      # (B, N, D)
    ("y",    lambda e: e["xhat"] * e["w"] + e["b"]),              # (B, N, D)
    ("L",    lambda e: (e["r"] * e["y"]).sum()),                  # ()
]
inputs = {"x": x, "w": g, "b": beta, "r": r}
env = run_steps(ln_steps, inputs)
xc, rstd, xhat = env["xc"], env["rstd"], env["xhat"]

# %%
dy = r                                                            # (B, N, D)
dw = (dy * xhat).reshape(-1, D).sum(0)                            # (D,)       y = xhat w + b
db = dy.reshape(-1, D).sum(0)                                     # (D,)
dxhat = dy * g                                                    # (B, N, D)
dxc = dxhat * rstd                                                # (B, N, D)  xhat = xc rstd
drstd = (dxhat * xc).sum(-1, keepdims=True)                       # (B, N, 1)
dvar = drstd * -0.5 * rstd ** 3                                   # (B, N, 1)  rstd = (var + eps)^-1/2
dxc += dvar * 2 * xc / D                                          # (B, N, D)  var = mean(xc²): xc's second use
dmean = -dxc.sum(-1, keepdims=True)                               # (B, N, 1)  xc = x - mean
dx = dxc + dmean / D                                              # (B, N, D)  mean = mean(x): x's second use
grads = {"y": dy, "w": dw, "b": db, "xhat": dxhat, "rstd": drstd, "var": dvar, "xc": dxc, "mean": dmean, "x": dx}
print(check_intermediates(ln_steps, inputs, grads, autograd(ln_steps, inputs), title="LayerNorm, line by line"))
collected = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
print("collected: dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)):", np.allclose(dx, collected))

# %%
forward = lambda x, w, b: R.layernorm_forward(x, w, b)
report = check_pair(forward, lambda d, c: R.layernorm_backward(d, c, g), {"x": x, "w": g, "b": beta},
                    title="npvit's layernorm_forward/backward")
print(report); print(report.summary())
def forgot_the_mean(d, c):
    dx, dw, db = R.layernorm_backward(d, c, g)
    return d * g * c.rstd, dw, db
print(check_pair(forward, forgot_the_mean, {"x": x, "w": g, "b": beta}, title="LayerNorm with dx = dxhat rstd").summary())

# %% [markdown]
# ## 4. GELU (tanh form, the article's)
#
# y = x · gate, gate = ½(1 + tanh u), u = √(2/π)(x + 0.044715 x³). x is used twice (as the
# factor and inside u): its two gradients add.

# %%
x4, r = 2 * rng.standard_normal((B, N, D)), rng.standard_normal((B, N, D))
c = np.sqrt(2 / np.pi)
gelu_steps = [
    ("u",    lambda e: c * (e["x"] + 0.044715 * e["x"] ** 3)),    # (B, N, D)
    ("t",    lambda e: tanh(e["u"])),                             # (B, N, D)
    ("gate", lambda e: 0.5 * (1 + e["t"])),                       # (B, N, D)
    ("y",    lambda e: e["x"] * e["gate"]),                       # (B, N, D)
    ("L",    lambda e: (e["r"] * e["y"]).sum()),
]
inputs = {"x": x4, "r": r}
env = run_steps(gelu_steps, inputs)
dy = r                                                            # (B, N, D)
dgate = dy * x4                                                   # (B, N, D)  y = x gate
dt = 0.5 * dgate                                                  # (B, N, D)  gate = (1 + t) / 2
du = dt * (1 - env["t"] ** 2)                                     # (B, N, D)  t = tanh(u)
dx = dy * env["gate"] + du * c * (1 + 3 * 0.044715 * x4 ** 2)     # (B, N, D)  x's two uses add
print(check_intermediates(gelu_steps, inputs, {"y": dy, "gate": dgate, "t": dt, "u": du, "x": dx},
                          autograd(gelu_steps, inputs), title="GELU, line by line"))
report = check_pair(lambda x: R.gelu_forward(x), R.gelu_backward, {"x": x4}, title="npvit's gelu_forward/backward")
print(report); print(report.summary())

# %% [markdown]
# ## 5. The attention core, with its softmax
#
# For every image and head at once: scores = q kᵀ, att = softmax(scale · scores) row by row,
# dropout's mask on att, ctx = att_d v. For one row of a softmax, ∂a_i/∂s_j = a_i(δ_ij − a_j), so
# ds = a ⊙ (da − Σ_j da_j a_j): one dot product per row, the N × N Jacobian never formed.

# %%
fig, ax = plt.subplots(figsize=(11, 2.4))
plot_graph([("q", "", [], "(B, H, Nq, hs)"), ("k", "", [], "(B, H, N, hs)"), ("v", "", [], "(B, H, N, hs)"),
            ("mask", "", [], "(B, H, Nq, N)"),
            ("scores", "q kᵀ", ["q", "k"], "(B, H, Nq, N)"), ("att", "softmax(scale·s)", ["scores"], "(B, H, Nq, N)"),
            ("att_d", "att · mask", ["att", "mask"], "(B, H, Nq, N)"), ("ctx", "att_d v", ["att_d", "v"], "(B, H, Nq, hs)")],
           ax=ax, title="the attention core's forward (Nq = N but in the last block, where only [CLS] asks)")
plt.show()

# %%
q, k, v = (rng.standard_normal((B, H, N, hs)) for _ in range(3))
mask = (rng.random((B, H, N, N)) >= 0.2) / 0.8                    # attention dropout, p = 0.2
r = rng.standard_normal((B, H, N, hs))
scale = hs ** -0.5
att_steps = [
    ("scores", lambda e: e["q"] @ T(e["k"])),                     # (B, H, N, N)
    ("sm",     lambda e: scale * e["scores"] - amax(scale * e["scores"])),   # (B, H, N, N) shifted
    ("ex",     lambda e: exp(e["sm"])),                           # (B, H, N, N)
    ("att",    lambda e: e["ex"] / total(e["ex"])),               # (B, H, N, N) rows sum to 1
    ("att_d",  lambda e: e["att"] * e["mask"]),                   # (B, H, N, N)
    ("ctx",    lambda e: e["att_d"] @ e["v"]),                    # (B, H, N, hs)
    ("L",      lambda e: (e["r"] * e["ctx"]).sum()),
]
inputs = {"q": q, "k": k, "v": v, "mask": mask, "r": r}
env = run_steps(att_steps, inputs)
att, att_d = env["att"], env["att_d"]

# %%
dctx = r                                                          # (B, H, N, hs)
datt_d = dctx @ v.swapaxes(-1, -2)                                # (B, H, N, N)   ctx = att_d v
dv = att_d.swapaxes(-1, -2) @ dctx                                # (B, H, N, hs)
datt = datt_d * mask                                              # (B, H, N, N)   att_d = att mask
dscores = scale * att * (datt - (datt * att).sum(-1, keepdims=True))   # (B, H, N, N)  softmax(scale s)
dq = dscores @ k                                                  # (B, H, N, hs)  scores = q kᵀ
dk = dscores.swapaxes(-1, -2) @ q                                 # (B, H, N, hs)
print(check_intermediates(att_steps, inputs, {"ctx": dctx, "att_d": datt_d, "v": dv, "att": datt, "scores": dscores,
                                              "q": dq, "k": dk}, autograd(att_steps, inputs),
                          title="attention core, line by line"))
keep = mask
report = check_pair(lambda q, k, v: R.attention_forward(np.stack([q, k, v]), scale, None, keep),
                    lambda d, c: tuple(R.attention_backward(d, c)), {"q": q, "k": k, "v": v},
                    title="npvit's attention_forward/backward, dropout mask")
print(report); print(report.summary())

# %% [markdown]
# ## 6. A whole block, and the patches
#
# A block is `x1 = x + attention(ln1(x))`, `y = x1 + mlp(ln2(x1))`; by the third fact,
#
#     dx1 = dy + ln2ᵀ(mlpᵀ(dy)),   dx = dx1 + ln1ᵀ(attentionᵀ(dx1))
#
# (`npvit/layers/block.py`). The patch embedding is im2col and a GEMM; its backward is the GEMM's
# and col2im, which adds each window's gradient back to its pixels. Their checks, array by array:

# %%
from npvit import layers as L
block = L.Block(D, H, 20, rng=np.random.default_rng(0), std=0.2)
report = check_layer_gradients(block, x, title="Block (every parameter)")
print(report); print(report.summary())
conv = L.Conv2d(3, 4, 3, stride=2, padding=1, rng=np.random.default_rng(0), std=0.2)
report = check_layer_gradients(conv, rng.standard_normal((2, 3, 7, 7)), title="Conv2d k3 s2 p1 (im2col, col2im)")
print(report); print(report.summary())

# %% [markdown]
# ## 7. The gradient reaches the pixels
#
# The same backward, run on the trained weights that ship with npvit, carries the gradient of a
# class's logit all the way back to the input image: |∂ logit / ∂ pixel| (largest over the three
# channels) shows which pixels would change the model's mind most.

# %%
from npvit.inference import PRETRAINED, load_trained
trained, meta = load_trained(PRETRAINED)
trained = trained.astype(np.float64)
sample = np.load(os.path.join(ROOT, "notebooks", "cifar10_sample.npz"))
classes = meta["classes"]
images, truth = sample["x"][:6], sample["y"][:6]
xs = (images / 255.0 - np.array(meta["mean"])[:, None, None]) / np.array(meta["std"])[:, None, None]
logits = trained.forward(xs)
dlogits = np.zeros_like(logits)
dlogits[np.arange(6), truth] = 1.0                                # d(logit of the true class)
trained.zero_grad()
dpixels = trained.backward(dlogits)                               # (6, 3, 32, 32)
saliency = np.abs(dpixels).max(axis=1)                            # (6, 32, 32)
fig, axes = plt.subplots(2, 6, figsize=(12, 4.4))
for j in range(6):
    axes[0, j].imshow(images[j].transpose(1, 2, 0))
    axes[0, j].set_title(f"true {classes[truth[j]]}\npredicted {classes[logits[j].argmax()]}", fontsize=8)
    im = axes[1, j].imshow(saliency[j], cmap="magma")
    fig.colorbar(im, ax=axes[1, j], fraction=0.046, pad=0.03)
    for a in axes[:, j]:
        a.set_xticks([]); a.set_yticks([])
axes[0, 0].set_ylabel("image", fontsize=8); axes[1, 0].set_ylabel("|d logit / d pixel|", fontsize=8)
plt.show()

# %% [markdown]
# ## 8. The whole model, and ten training steps against the article's PyTorch code
#
# The gradient check of every parameter of a small ViT by name; then the article's own
# `ViTForClassfication` (`reference/article_vit.py`) and npvit, from the same weights, take
# ten AdamW steps on the same batches: their losses side by side.

# %%
from npvit.gradcheck import check_model_gradients
small = npvit.ViT(npvit.ViTConfig.tiny(), dtype="float64", seed=0)
report = check_model_gradients(small, rng.standard_normal((2, 3, 8, 8)), np.array([1, 3]))
print(report.summary())

# %%
from npvit.optim import AdamW
from npvit.training.step import train_step
config = {**npvit.ViTConfig().to_dict(), "hidden_size": 24, "num_attention_heads": 3, "intermediate_size": 40,
          "num_hidden_layers": 2}
ours = npvit.ViT(config, dtype="float64", seed=0)
opt = AdamW(ours, lr=3e-3, weight_decay=0.05)
if torch is not None:
    from reference.article_vit import ViTForClassfication
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
