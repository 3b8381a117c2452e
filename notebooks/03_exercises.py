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
# # Write it yourself: nine backward passes, graded at once, then train on them
#
# Each exercise gives you a forward (npvit's reference, `npvit/ops/reference.py`) and asks for
# its backward, from the easiest to the hardest. Write it in the marked cell and run the next one:
# `npvit.exercises.grade` checks your gradients against finite differences of the forward, in
# float64, on small odd shapes and on every case the forward has (a dropout mask, a query from
# [CLS] only, overlapping windows). It prints one table and one line: **PASS**, or **FAIL**
# naming the array that is wrong (dq, dk and dv apart), where (which tokens, heads or rows) and
# what the error looks like when it looks like something (a transpose, a constant per row, a
# missing 1/√hs, a residual's skip path left out, a mistake it knows). Right answers give a
# relative error near 1e-10 here; wrong ones 1e-3 or more; FAIL is above 1e-6. A correct backward
# that updates `dy` in place passes; a gradient computed in float32 is not graded (say float64);
# an exception in your code is one line naming your line.
#
# `example(name)` hands you the arguments the grader calls your function with, to try it first.
# `docs/backprop.md` derives each backward; the solutions are in `notebooks/solutions.py`: look
# only after trying. At the end, your functions become a kernel set of their own and train the ViT.
#
# | # | exercise | what you write | minutes |
# |---|---|---|---|
# | 1 | Linear and its bias | `linear_backward(dy, cache, w)` | 5 |
# | 2 | cross-entropy, label smoothing | `cross_entropy_backward(cache)` | 5 |
# | 3 | GELU | `gelu_backward(dy, cache)` | 10 |
# | 4 | softmax | `softmax_backward(datt, att)` | 10 |
# | 5 | LayerNorm | `layernorm_backward(dy, cache, w)` | 20 |
# | 6 | [CLS] and positions | `embeddings_backward(dtokens)` | 10 |
# | 7 | the patch convolution | `col2im(dcols, x_shape, stride, padding)` | 25 |
# | 8 | the attention core, dropout and [CLS] | `attention_backward(dctx, cache)` | 30 |
# | 9 | a whole block | `block_backward(block, dy)` | 15 |

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
from npvit.exercises import example, grade

# %% [markdown]
# ## 1. Linear: y = x Wᵀ + b
#
# x is (B, N, D) and y (B, N, K); `cache.x2d` is x with its leading axes folded into rows,
# (B·N, D). Return `(dx, dw, db)`: dx shaped like x, dw like w (K, D), db like b (K,). The bias is
# added to every row.

# %%
def linear_backward(dy, cache, w):
    x2d = cache.x2d                                   # (B*N, D)
    # YOUR CODE HERE: dx, dw, db
    raise NotImplementedError

# %%
grade("linear", linear_backward)

# %% [markdown]
# ## 2. Cross-entropy with label smoothing
#
# loss = −(1/B) Σ_b Σ_k q_bk log p_bk, p = softmax(logits), q the smoothed target. The cache holds
# `logp` (B, K) and `q` (B, K). Return dlogits (B, K). Hint: q sums to 1 in every row.

# %%
def cross_entropy_backward(cache):
    logp, q = cache
    # YOUR CODE HERE: dlogits
    raise NotImplementedError

# %%
grade("cross_entropy", cross_entropy_backward)

# %% [markdown]
# ## 3. GELU (tanh)
#
# y = x · gate, gate = ½(1 + tanh u), u = √(2/π)(x + 0.044715 x³). The cache holds `x`, `gate`
# and the form (`"tanh"`). Hint: ½(1 − tanh² u) = 2 · gate · (1 − gate).

# %%
SQRT_2_OVER_PI, GELU_COEF = np.sqrt(2 / np.pi), 0.044715

def gelu_backward(dy, cache):
    x, gate, _ = cache
    # YOUR CODE HERE: dx
    raise NotImplementedError

# %%
grade("gelu", gelu_backward)

# %% [markdown]
# ## 4. Softmax
#
# `att = softmax(scores)` over the last axis, for every image, head and row. Given `datt`, return
# `dscores`. The Jacobian of one row is diag(att) − att attᵀ; you do not need to build it.

# %%
def softmax_backward(datt, att):
    # YOUR CODE HERE: dscores
    raise NotImplementedError

# %%
grade("softmax", softmax_backward)

# %% [markdown]
# ## 5. LayerNorm
#
# Each token is normalised over its D features: xhat = (x − mean) · rstd, rstd = 1/√(var + ε),
# y = xhat · w + b. The cache holds `xhat` and `rstd` (shape (..., 1)). Return `(dx, dw, db)`.
# The mean and the variance depend on x too (02 walks through it line by line).

# %%
def layernorm_backward(dy, cache, w):
    xhat, rstd = cache
    # YOUR CODE HERE: dx, dw, db
    raise NotImplementedError

# %%
grade("layernorm", layernorm_backward)

# %% [markdown]
# ## 6. [CLS] and the positions
#
# tokens = concat([CLS], patches) + pos: patches (B, N − 1, D), cls (1, 1, D) and pos (1, N, D),
# the last two shared by every image. Given dtokens (B, N, D), return `(dpatches, dcls, dpos)`.

# %%
def embeddings_backward(dtokens):
    # YOUR CODE HERE: dpatches, dcls, dpos
    raise NotImplementedError

# %%
grade("embeddings", embeddings_backward)

# %% [markdown]
# ## 7. The patch convolution: col2im
#
# npvit's convolution gathers every window of the image into a row (`im2col`: x (B, C, H, W) →
# cols (B, OH, OW, C, kh, kw)) and multiplies by the kernel. Its backward needs the way back:
# given dcols, return dx (B, C, H, W), each window's gradient added to the pixels it read. Where
# windows overlap (kernel 3, stride 2) a pixel gets the sum; padding's gradient is dropped. A loop
# over the kh · kw offsets of the kernel is fine; none over images or windows.

# %%
def col2im(dcols, x_shape, stride, padding):
    B, C, H, W = x_shape
    _, OH, OW, _, kh, kw = dcols.shape
    # YOUR CODE HERE: dx (B, C, H, W)
    raise NotImplementedError

# %%
grade("col2im", col2im)

# %% [markdown]
# ## 8. The attention core
#
# qkv is (3, B, H, N, hs): q, k, v of every head. The forward: scores = q kᵀ, att =
# softmax(scale · scores), att_dropped = att · mask (attention dropout; att itself when `mask` is
# None), ctx = att_dropped v. In the last block only [CLS] asks: q is `qkv[0, :, :, :nq]` with
# nq = `num_queries`, and the other tokens get no query gradient. Return dqkv, shaped like qkv. The
# grader tries all three cases: plain, dropout, [CLS] only.

# %%
def attention_backward(dctx, cache):
    qkv, att, att_dropped, mask, scale, nq = cache
    q, k, v = qkv[0, :, :, :nq], qkv[1], qkv[2]
    # YOUR CODE HERE: dq, dk, dv, stacked into dqkv (3, B, H, N, hs)
    raise NotImplementedError

# %%
grade("attention", attention_backward)

# %% [markdown]
# ## 9. A whole block
#
# `x1 = x + block.attention(block.layernorm_1(x))`, `y = x1 + block.mlp(block.layernorm_2(x1))`.
# Every sub-layer has its own `backward(dy)` (it returns dx and adds its parameter gradients).
# Write the block's backward from them.

# %%
def block_backward(block, dy):
    # YOUR CODE HERE: dx, through both residuals
    raise NotImplementedError

# %%
grade("block", block_backward)

# %% [markdown]
# ## Capstone: train the ViT on your own backward
#
# The functions you wrote become a kernel set of their own through npvit's kernel contract
# (`npvit/ops/contract.py`): `kernel_set(...)` puts each in place of the reference's and takes the
# rest (the GEMMs, the forwards, the optimiser) from it. First the whole-model gradient check runs
# on your set: a wrong function shows there, before any training. Then the article's model
# trains for 150 steps on real CIFAR-10 images (the 100 that ship with npvit, so it runs anywhere:
# a falling loss, not a test accuracy) on your backward and on npvit's own, from the same weights
# and batches: the two curves lie on top of each other, equal to float64 round-off (a model that memorises 100
# images is chaotic: over many more steps the round-off would grow, as between any two correct
# implementations). Exercises not done
# yet run on the solutions, so the cell works from the start; finish them and run it again.

# %%
import importlib.util
import matplotlib.pyplot as plt
from npvit.exercises import kernel_set, train_steps
from npvit.gradcheck import check_model_gradients
spec = importlib.util.spec_from_file_location("solutions", os.path.join(ROOT, "notebooks", "solutions.py"))
solutions = importlib.util.module_from_spec(spec); spec.loader.exec_module(solutions)

def yours_or_the_solution(name, fn, *args):
    """Your function where it is written, else the solution's (and say so)."""
    try:
        fn(*args)
        return fn
    except NotImplementedError:
        print(f"{fn.__name__}: not written yet, the solution stands in")
        return getattr(solutions, fn.__name__)

fns = {f.__name__: yours_or_the_solution(n, f, *example(n)) for n, f in [
    ("linear", linear_backward), ("cross_entropy", cross_entropy_backward), ("gelu", gelu_backward),
    ("softmax", softmax_backward), ("layernorm", layernorm_backward), ("col2im", col2im),
    ("attention", attention_backward)]}
mine = kernel_set("mine", **fns)
rng = np.random.default_rng(0)
report = check_model_gradients(npvit.ViT(npvit.ViTConfig.tiny(), dtype="float64", kernels=mine),
                               rng.standard_normal((2, 3, 8, 8)), np.array([1, 3]))
print(report.summary())

# %%
sample = np.load(os.path.join(ROOT, "notebooks", "cifar10_sample.npz"))
yours = train_steps(mine, sample["x"], sample["y"], steps=150)
own = train_steps("reference", sample["x"], sample["y"], steps=150)
print(f"loss: {yours[0]:.4f} -> {yours[-1]:.4f}; largest difference from npvit's own set over 150 steps: "
      f"{max(abs(a - b) for a, b in zip(yours, own)):.1e}")
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(own, lw=3, alpha=0.4, label="npvit's reference set")
ax.plot(yours, lw=1, label="your kernel set")
ax.set_xlabel("step"); ax.set_ylabel("training loss (batch of 32)"); ax.legend()
ax.set_title("the article's ViT on 100 CIFAR-10 images, float64", fontsize=9)
plt.show()
