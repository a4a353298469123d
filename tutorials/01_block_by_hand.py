# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. A transformer block by hand
#
# Everything in this course runs on a transformer whose forward **and backward** passes are
# written out by hand in NumPy. This first tutorial opens one block, looks at what its
# forward pass keeps for the backward pass, and shows the one piece of evidence we accept
# that a handwritten gradient is right: a **gradient check** against finite differences.
#
# One block of `minimal_icl`, acting on the tokens $z \in \mathbb{R}^{T \times D}$ of a prompt
# (rows are tokens), is
#
# $$
# \begin{aligned}
# u_1 &= \mathrm{LN}_1(z) &&\text{(or } u_1 = z \text{ without LayerNorm)}\\
# A &= \mathrm{Attn}(u_1) &&\text{multi-head self-attention, no biases}\\
# h &= z + A &&\text{(or } h = A \text{ without the attention skip)}\\
# u &= \mathrm{LN}_2(h) &&\text{the MLP input}\\
# \mathrm{out} &= h + W_2\, g(W_1 u + b_1) + b_2 &&\text{(or drop the } h + \text{ without the MLP skip)}
# \end{aligned}
# $$
#
# with softmax attention
# $\mathrm{Attn}(x) = \mathrm{concat}_h\big(\mathrm{softmax}(Q_h K_h^\top/\sqrt{K})\, V_h\big)\, W_O^\top$,
# $Q_h = x W_{Q,h}^\top$, and so on. $W_1$ — the first dense layer after attention — is the
# matrix $W$ of the theorems in the next tutorials (Dherin et al. 2025, arXiv:2507.16003,
# section 2: a *contextual block* $T_W = M_W \circ A$).
#
# **What we will check**
#
# 1. the forward pass and what its cache holds;
# 2. the backward pass against fourth-order central differences, for every parameter and the
#    input tokens, to relative error $\le$ `GRADCHECK_RTOL` $= 10^{-6}$;
# 3. that the checker *can fail*: a deliberately wrong softmax backward is caught;
# 4. that `last_only=True` (used in training) gives the same query output as the full pass.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy

import minimal_icl
from minimal_icl import (
    GRADCHECK_RTOL,
    IDENTITY_RTOL,
    TransformerConfig,
    backward,
    forward,
    init_params,
    relative_residual,
)
from minimal_icl.attention import attention_backward, softmax_backward, softmax_forward
from minimal_icl.gradcheck import check_gradients, check_layer

print("minimal_icl", minimal_icl.__version__)

# %% [markdown]
# ## A small block
#
# A GPT-style block: two heads, pre-LayerNorm, both skip connections, exact GELU. Tokens are
# used as given (no embedding, no positional encoding), as in the paper. Every random number
# comes from an explicit seed.

# %%
config = TransformerConfig(
    d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=8,
    attention="softmax", activation="gelu",
    attn_skip=True, mlp_skip=True, layer_norm=True,
)
params = init_params(config, seed=0)
rng = numpy.random.default_rng(1)
B, T, D = 2, 5, config.d_token
tokens = rng.standard_normal((B, T, D))  # (B, T, D): 2 prompts of 5 tokens

block = params.blocks[0]
for name, value in minimal_icl.tree_leaves(params):
    print(f"{name:22s} {tuple(value.shape)}")

# %% [markdown]
# Weights are stored as (out, in), so a dense layer is $x W^\top + b$ on row-vector tokens —
# exactly $W z + b$ on a column vector $z$, the paper's orientation.
#
# ## The forward pass and its cache
#
# `forward` returns the output and a **cache**: everything the backward pass will need. A
# layer's backward needs the layer's *input* (for $y = x W^\top$, $\partial L/\partial W =
# (\partial L/\partial y)^\top x$) and, for softmax, its *output* (the Jacobian of softmax is
# $\mathrm{diag}(P) - P P^\top$). Nothing is recomputed and nothing is mutated.

# %%
out, cache = forward(params, config, tokens)
block_cache = cache.blocks[0]
print("out", out.shape)
print("BlockCache fields:", block_cache._fields)
for field in ("A", "h", "u"):
    print(f"  {field}: {getattr(block_cache, field).shape}")
print("attention weights P:", block_cache.attn.weights.shape, "(B, H, Tq, T)")
print("rows of P sum to 1:", numpy.allclose(numpy.sum(block_cache.attn.weights, axis=-1), 1.0))

# %% [markdown]
# The three arrays `A`, `h`, `u` are the ones the theory talks about: the attention output
# $A$, the residual stream after attention $h$, and the MLP input $u$. The implicit weight
# update of tutorial 2 is built from `u` at the query position with and without context.
#
# The attention weights of each head, for the first prompt:

# %%
fig, axes = plt.subplots(1, config.n_heads, figsize=(7, 3), constrained_layout=True)
for head, ax in enumerate(axes):
    image = ax.imshow(block_cache.attn.weights[0, head], vmin=0, vmax=1, cmap="viridis")
    ax.set_title(f"head {head}")
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
fig.colorbar(image, ax=axes, label="attention weight")
plt.show()

# %% [markdown]
# ## The backward pass, mirrored
#
# The backward walks the forward in reverse, and each step names the forward line it
# inverts. Here is the library's attention backward (read from the source, not copied):

# %%
print(inspect.getsource(attention_backward))

# %% [markdown]
# ## The gradient check
#
# Pick a **random** upstream gradient $G$ and the scalar $L = \sum \mathrm{out} \odot G$.
# Then `backward(G, cache)` claims to return $\partial L / \partial \theta$ for every parameter
# $\theta$ and $\partial L/\partial z$ for the tokens. `check_gradients` compares each with
# fourth-order central differences
#
# $$
# \frac{\partial L}{\partial \theta_i} \approx
# \frac{8\,[L(\theta + h e_i) - L(\theta - h e_i)] - [L(\theta + 2h e_i) - L(\theta - 2h e_i)]}{12 h},
# $$
#
# and reports $\|g_{\text{analytic}} - g_{\text{numeric}}\| / \max(\|g_{\text{analytic}}\|,
# \|g_{\text{numeric}}\|)$ per parameter. A random $G$ matters: with $G$ all ones, errors that
# cancel in a sum go unseen.

# %%
G = rng.standard_normal(out.shape)
dtokens, grads = backward(G, cache)


def loss_of_params(p):
    return float(numpy.sum(forward(p, config, tokens)[0] * G))


def loss_of_tokens(z):
    return float(numpy.sum(forward(params, config, z)[0] * G))


errors = check_gradients(loss_of_params, params, grads)
errors["tokens"] = check_gradients(loss_of_tokens, tokens, dtokens)["input"]
for name, error in errors.items():
    print(f"{name:22s} {error:.2e}")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
names = list(errors)
ax.bar(range(len(names)), [errors[n] for n in names], color="tab:blue")
ax.axhline(GRADCHECK_RTOL, color="tab:red", linestyle="--", label="GRADCHECK_RTOL")
ax.set_yscale("log")
ax.set_xticks(range(len(names)), [n.replace("blocks.0.", "") for n in names], rotation=60, ha="right")
ax.set_ylabel("relative error")
ax.set_title("handwritten backward vs finite differences")
ax.legend()
plt.show()

# %% [markdown]
# ## A checker that can fail
#
# A check that cannot fail proves nothing. Here is a *wrong* softmax backward that forgets
# the $-P P^\top$ part of the Jacobian (it returns $P \odot dP$ instead of
# $P \odot (dP - \sum_j dP_j P_j)$). `check_layer` runs a forward/backward pair with a random
# upstream gradient; the correct library backward passes and the wrong one is caught.

# %%
scores = rng.standard_normal((2, 3, 4))


def wrong_softmax_backward(dprobs, softmax_cache):
    return softmax_cache.probs * dprobs  # missing: − P Σ_j dP_j P_j


right = check_layer(softmax_forward, softmax_backward, scores, seed=3)["input"]
wrong = check_layer(softmax_forward, wrong_softmax_backward, scores, seed=3)["input"]
print(f"library softmax backward: {right:.2e}")
print(f"wrong softmax backward:   {wrong:.2e}")

# %% [markdown]
# ## `last_only`: the same answer for less work
#
# The in-context regression loss reads only the last token's output, so training runs the last
# block for the last query position only (`last_only=True`). Its keys and values still come
# from every token, so the output at the query must be identical.

# %%
out_last, _ = forward(params, config, tokens, last_only=True)  # (B, 1, D)
last_only_residual = relative_residual(out_last[:, 0], out[:, -1])
print(f"relative residual, last_only vs full: {last_only_residual:.1e}")

# %% [markdown]
# ## Exercises
#
# 1. Switch `attention="linear"` and `activation="relu"` in the config and rerun the gradient
#    check. Does anything change?
# 2. Write another wrong softmax backward that subtracts the plain mean of $dP$ instead of the
#    $P$-weighted mean, $P \odot (dP - \tfrac{1}{T}\sum_j dP_j)$. Does `check_layer` catch it? Now
#    compare it with the library backward for an all-ones upstream gradient: why would a
#    checker that probes with ones never see this bug?
#
# The solution is folded away below (click to open it).

# %% jupyter={"source_hidden": true}
# Solution 2. With dP = 1 both backwards give 0: the true one because Σ_j P_j = 1, the wrong
# one because dP − mean(dP) = 0. Only a random upstream gradient tells them apart.
def mean_softmax_backward(dprobs, softmax_cache):
    return softmax_cache.probs * (dprobs - numpy.mean(dprobs, axis=-1, keepdims=True))


print("check_layer error of the plain-mean backward:",
      f"{check_layer(softmax_forward, mean_softmax_backward, scores, seed=3)['input']:.2e}")
probs, softmax_cache = softmax_forward(scores)
for name, upstream in (("ones", numpy.ones_like(probs)), ("random", rng.standard_normal(probs.shape))):
    gap = numpy.max(numpy.abs(mean_softmax_backward(upstream, softmax_cache)
                              - softmax_backward(upstream, softmax_cache)))
    print(f"upstream {name:6s}: max |plain-mean − library| = {gap:.1e}")

# %% [markdown]
# ## Checks
#
# Running this tutorial is a test: these asserts use the package's shared tolerances.

# %%
assert max(errors.values()) <= GRADCHECK_RTOL, errors
assert right <= GRADCHECK_RTOL
assert wrong > 1e3 * GRADCHECK_RTOL, "the checker must catch a wrong softmax Jacobian"
assert last_only_residual <= IDENTITY_RTOL
assert numpy.allclose(numpy.sum(block_cache.attn.weights, axis=-1), 1.0, rtol=0, atol=IDENTITY_RTOL)
assert out.shape == (B, T, D) and dtokens.shape == tokens.shape
