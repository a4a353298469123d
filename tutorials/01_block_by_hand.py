# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
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
# forward pass keeps for the backward pass, has you write the one backward that is easy to
# get wrong (softmax), and shows the one piece of evidence we accept that a handwritten
# gradient is right: a **gradient check** against finite differences. Symbols follow the
# [notation](../docs/notation.md) table.
#
# One block of `minimal_icl`, acting on the tokens $z \in \mathbb{R}^{T \times D}$ of a prompt
# (rows are tokens), is
#
# $$
# \begin{aligned}
# A &= \mathrm{Attn}\big(\mathrm{LN}_1(z)\big) &&\text{(or } \mathrm{Attn}(z) \text{ without LayerNorm)}\\
# h &= z + A &&\text{(or } h = A \text{ without the attention skip)}\\
# u &= \mathrm{LN}_2(h) &&\text{the MLP input (or } u = h\text{)}\\
# \mathrm{out} &= h + W'\, g(W u + b) + b' &&\text{(or drop the } h + \text{ without the MLP skip)}
# \end{aligned}
# $$
#
# with multi-head softmax self-attention without biases: for each head and each token, with
# $\tilde z = \mathrm{LN}_1(z)$ the token after the first LayerNorm,
# $q = W_Q^{\text{head}} \tilde z$, $k = W_K^{\text{head}} \tilde z$,
# $v = W_V^{\text{head}} \tilde z$ (in $\mathbb{R}^K$; $W_Q^{\text{head}}$ is that head's block
# of $K$ rows of $W_Q$, which is $(HK, D)$; the letter $h$ is kept for the residual stream),
# scores $S = q^\top k/\sqrt{K}$ for each query–key pair, weights $P = \mathrm{softmax}(S)$ over
# the keys, and $A = W_O\,\mathrm{concat}_{\text{heads}}(P v)$. $W$, the first dense layer
# after attention (`mlp.W1`), is the matrix of the theorems in the next tutorials (Dherin et
# al. 2025, arXiv:2507.16003, section 2: a *contextual block* $T_W = M_W \circ A$).
#
# **What we will do**
#
# 1. run the forward pass and look at what its cache holds;
# 2. **write the softmax backward yourself**, first row by row from its Jacobian, then in
#    the compact form the library uses; a check runs it through the gradient checker and
#    against the library;
# 3. check the whole block's backward against fourth-order central differences, for every
#    parameter and the input tokens, to relative error $\le$ `GRADCHECK_RTOL` $= 10^{-6}$;
# 4. see that the checker *can fail*: a deliberately wrong softmax backward is caught;
# 5. check that `last_only=True` (used in training) gives the same query output.

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
from minimal_icl.exercises.tutorial_01 import (
    check_softmax_backward,
    check_softmax_backward_explicit,
)
from minimal_icl.gradcheck import check_gradients, check_layer

print("minimal_icl", minimal_icl.__version__)

# %% [markdown]
# ## A small block
#
# A GPT-style block without a causal mask (`causal=False`, the default: every token attends
# to every token): two heads of width $K = 4$, pre-LayerNorm, both skip connections,
# exact GELU, MLP width $M = 8$. Tokens are used as given (no embedding, no positional
# encoding), as in the paper. Every random number comes from an explicit seed.

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
# $\mathrm{diag}(P) - P P^\top$, a function of $P$ alone). Nothing is recomputed and nothing
# is mutated.

# %%
out, cache = forward(params, config, tokens)
block_cache = cache.blocks[0]
print("out", out.shape, "  cache fields:", ", ".join(block_cache._fields))
print("| array | shape | what it is |\n|---|---|---|")
for field, meaning in (("A", "attention output"), ("h", "residual after attention"),
                       ("u", "MLP input LN2(h)")):
    print(f"| {field} | {getattr(block_cache, field).shape} | {meaning} |")
print(f"| P | {block_cache.attn.weights.shape} | attention weights (B, H, Tq, T) |")
row_sums = numpy.sum(block_cache.attn.weights, axis=-1)  # (B, H, T)
print("rows of P sum to 1:", numpy.allclose(row_sums, 1.0))

# %% [markdown]
# The three arrays `A`, `h`, `u` are the ones the theory talks about: the attention output
# $A$, the residual stream after attention $h$, and the MLP input $u$. The implicit weight
# update of tutorial 2 is built from `u` at the query position with and without context.
#
# The attention weights of each head, for the first prompt. Even at initialisation they are
# not uniform: with $T = 5$ tokens the uniform weight is $1/T = 0.2$, and the weights here
# run from about 0.07 to 0.49 (printed below; the colour scale follows the data).

# %%
print(f"attention weights from {numpy.min(block_cache.attn.weights):.2f} to"
      f" {numpy.max(block_cache.attn.weights):.2f}; uniform would be 1/T = {1 / T:.2f}")
fig, axes = plt.subplots(1, config.n_heads, figsize=(7, 3), constrained_layout=True)
for head, ax in enumerate(axes):
    image = ax.imshow(block_cache.attn.weights[0, head], cmap="viridis")
    ax.set_title(f"head {head}")
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
fig.colorbar(image, ax=axes, label="attention weight")
plt.show()

# %% [markdown]
# ## Your turn: the softmax backward
#
# The backward walks the forward in reverse. The one step that is not a matrix product is
# the softmax. For one row $p = \mathrm{softmax}(s)$, $p_i = e^{s_i}/\sum_j e^{s_j}$, the
# Jacobian is
#
# $$
# J_{ik} = \frac{\partial p_i}{\partial s_k} = p_i(\delta_{ik} - p_k),\qquad
# J = \mathrm{diag}(p) - p\,p^\top ,
# $$
#
# and the backward maps the upstream gradient $dp = \partial L/\partial p$ of that row to
# $ds = J^\top dp$ (the chain rule: $ds_k = \sum_i dp_i\, \partial p_i/\partial s_k$).
#
# **Stage 1, explicit.** Inside the loop below, `p` and `dp` are one row of the weights $P$
# and of the upstream gradient $dP$ (shape `(T,)`). Build `J` $= \mathrm{diag}(p) - p p^\top$
# (`numpy.diag`, `numpy.outer`) and store `J.T @ dp` in `dscores[index]`.

# %%
def softmax_backward_explicit(dprobs, softmax_cache):
    """dS from dP, one row at a time, through the Jacobian of each row."""
    P = softmax_cache.probs  # (..., T)
    dscores = numpy.empty_like(dprobs)
    for index in numpy.ndindex(P.shape[:-1]):  # every row (prompt, head, query)
        p, dp = P[index], dprobs[index]  # (T,), (T,)
        ### BEGIN SOLUTION
        J = numpy.diag(p) - numpy.outer(p, p)  # J[i, k] = ∂p_i/∂s_k
        dscores[index] = J.T @ dp
        ### END SOLUTION
    return dscores


# %%
check_softmax_backward_explicit(softmax_backward_explicit);  # ";": no Out[] line (the check returns its residuals for the tests);

# %% [markdown]
# **Stage 2, compact.** Building a $T \times T$ matrix per row is wasteful. Write out
# $J^\top dp$ with $J = \mathrm{diag}(p) - p p^\top$:
#
# $$
# ds_k = p_k\, dp_k - p_k \sum_j dp_j\, p_j
# \quad\Longrightarrow\quad
# dS = P \odot \Big(dP - \sum_j dP_j\, P_j\Big),
# $$
#
# where the sum runs over the **keys** $j$ (the last axis, over which each row of $P$ sums to
# 1) and broadcasts back over that axis. Write this one line for arrays of any shape
# `(..., T)` and store it in `dscores` (the function returns it);
# `numpy.sum(..., axis=-1, keepdims=True)` keeps the broadcast right.

# %%
def softmax_backward_compact(dprobs, softmax_cache):
    """dS = P ⊙ (dP − Σ_j dP_j P_j) over the last axis, all rows at once."""
    P = softmax_cache.probs  # (..., T)
    ### BEGIN SOLUTION
    dscores = P * (dprobs - numpy.sum(dprobs * P, axis=-1, keepdims=True))
    ### END SOLUTION
    return dscores


# %%
check_softmax_backward(softmax_backward_compact);

# %% [markdown]
# The library's `softmax_backward` is this line. In `attention_backward` it sits between
# the matrix products it mirrors, and each step quotes the forward line it inverts. Here
# are those lines of the library's source (read from the package, not copied):

# %%
source = inspect.getsource(attention_backward).splitlines()
at = next(i for i, line in enumerate(source)
          if "softmax_backward(" in line and "dscores" in line)
print("\n".join(source[max(at - 6, 0):at + 6]))

# %% [markdown]
# ## The gradient check of the whole block
#
# Pick a **random** upstream gradient $d\mathrm{out}$ (an array shaped like `out`) and the
# scalar $L = \sum \mathrm{out} \odot d\mathrm{out}$. Then `backward(dout, cache)` claims to
# return $\partial L / \partial p$ for every parameter array $p$ (`W_Q`, ..., `W1`, `b1`, ...)
# and $\partial L/\partial z$ for the tokens. `check_gradients` compares each entry with
# fourth-order central differences (step $\epsilon = 10^{-5}$, $e_k$ the $k$-th unit vector)
#
# $$
# \frac{\partial L}{\partial p_k} \approx
# \frac{8\,[L(p + \epsilon e_k) - L(p - \epsilon e_k)]
#       - [L(p + 2\epsilon e_k) - L(p - 2\epsilon e_k)]}{12 \epsilon},
# $$
#
# and reports, per parameter array, the relative error
# $\|\nabla_{\text{backward}} - \nabla_{\text{numeric}}\| / \max(\|\nabla_{\text{backward}}\|,
# \|\nabla_{\text{numeric}}\|)$. A random $d\mathrm{out}$ matters: an all-ones upstream gradient
# can hide an error, as exercise 2 shows at the softmax checked alone, where
# $dP = \mathbf{1}$ makes the plain mean $\frac{1}{T}\sum_j dP_j$ and the right, $P$-weighted
# one $\sum_j dP_j P_j$ agree. (Inside the whole block $dP$ is not all ones even for
# $d\mathrm{out} = \mathbf{1}$, so there this bug would show either way.)

# %%
dout = rng.standard_normal(out.shape)  # (B, T, D)  the upstream gradient
dtokens, grads = backward(dout, cache)


def loss_of_params(p):
    return float(numpy.sum(forward(p, config, tokens)[0] * dout))


def loss_of_tokens(z):
    return float(numpy.sum(forward(params, config, z)[0] * dout))


errors = check_gradients(loss_of_params, params, grads)
errors["tokens"] = check_gradients(loss_of_tokens, tokens, dtokens)["input"]
print("| gradient of | relative error |\n|---|---|")
for name, error in errors.items():
    print(f"| {name.replace('blocks.0.', '')} | {error:.1e} |")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
names = list(errors)
ax.bar(range(len(names)), [errors[n] for n in names], color="tab:blue")
ax.axhline(GRADCHECK_RTOL, color="tab:red", linestyle="--", label="GRADCHECK_RTOL")
ax.set_yscale("log")
ax.set_xticks(range(len(names)), [n.replace("blocks.0.", "") for n in names],
              rotation=60, ha="right")
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
# upstream gradient; the library backward passes and the wrong one is caught.

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
# ## Summary
#
# * A block is $h = z + \mathrm{Attn}(\mathrm{LN}_1(z))$, $\mathrm{out} = h + W' g(W\,
#   \mathrm{LN}_2(h) + b) + b'$; its cache keeps each layer's input (and softmax's output).
# * Softmax's Jacobian is $\partial P_i/\partial S_k = P_i(\delta_{ik} - P_k)$, so its
#   backward is $dS = P \odot (dP - \sum_j dP_j P_j)$.
# * A gradient is right when $\|\nabla_{\text{backward}} - \nabla_{\text{numeric}}\|/\max(\|\cdot\|)
#   \le 10^{-6}$ for $L = \sum \mathrm{out} \odot d\mathrm{out}$ with a **random** $d\mathrm{out}$.
# * The checker fails on a wrong backward: $P \odot dP$ alone gives a relative error of
#   about $0.5$ here, against $\approx 10^{-11}$ for $P \odot (dP - \sum_j dP_j P_j)$.
# * `last_only=True`: $\mathrm{out}_{\text{last only}} = \mathrm{out}[:, -1]$ to $10^{-12}$.

# %% [markdown]
# ## Exercises
#
# 1. *(Derivation.)* From $p_i = e^{s_i}/\sum_j e^{s_j}$, derive $\partial p_i/\partial s_k =
#    p_i(\delta_{ik} - p_k)$, and from it $ds = J^\top dp = p \odot (dp - \langle dp, p\rangle)$.
#    Why is $J$ symmetric, and why does $J\mathbf{1} = 0$ hold?
# 2. *(Prediction, then code.)* Two wrong backwards: $P \odot (dP - \tfrac{1}{T}\sum_j dP_j)$
#    (the plain mean instead of the $P$-weighted mean) and $P \odot dP - P/T$. Predict what
#    each returns, next to the library's, for an all-ones upstream gradient $dP = \mathbf{1}$,
#    then check. Why does a checker that probes with ones miss bugs that a random upstream
#    gradient catches?
# 3. *(Prediction.)* Switch the block to `attention="linear"` and `activation="relu"` and
#    rerun the gradient check of the whole block. Which rows of the table change, and does
#    anything fail?
# 4. *(Extension.)* Write the LayerNorm backward. For $y = \gamma \odot \hat x + \beta$ (gain $\gamma$, bias $\beta$),
#    $\hat x = (x - \mu)\,r$, $r = 1/\sqrt{\sigma^2 + \mathrm{eps}}$ (biased variance), show
#    $dx = r\,(d\hat x - \mathrm{mean}(d\hat x) - \hat x\, \mathrm{mean}(d\hat x \odot \hat x))$
#    with $d\hat x = \gamma \odot dy$ (means over the last axis, of width $D$), code it as
#    `my_layernorm_backward(dy, ln_cache) -> dx` (`layernorm_forward(x, params, eps)` returns
#    $y$ and the cache $(\hat x, r, \gamma)$ of shapes $(B, T, D)$, $(B, T, 1)$, $(D,)$), and check
#    it with `check_layer` and against `minimal_icl.layernorm.layernorm_backward`. Make the
#    parameters with `minimal_icl.params.LayerNormParams(gain=..., bias=...)` and give
#    `check_layer` a function of the input alone:
#    `lambda x: layernorm_forward(x, ln_params, config.ln_eps)`.
#
# The solutions are folded away below (click to open them).

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** $\partial p_i/\partial s_k = \big(\delta_{ik} e^{s_i}\sum_j e^{s_j} -
# e^{s_i} e^{s_k}\big)/(\sum_j e^{s_j})^2 = p_i\delta_{ik} - p_i p_k$. So
# $J = \mathrm{diag}(p) - p p^\top$, symmetric because $p p^\top$ is. Then
# $ds_k = \sum_i dp_i J_{ik} = p_k dp_k - p_k \sum_i dp_i p_i$, i.e.
# $ds = p \odot (dp - \langle dp, p\rangle)$. $J\mathbf 1 = p - p\,(p^\top \mathbf 1) = 0$
# because $\sum_k p_k = 1$: adding a constant to every score changes nothing (which is why
# the forward may subtract the row maximum), so $ds$ always sums to zero over a row.

# %% jupyter={"source_hidden": true}
# Solution 2. With dP = 1, the library gives P ⊙ (1 − Σ_j P_j) = 0 (Σ_j P_j = 1), the
# plain-mean backward gives P ⊙ (1 − 1) = 0 as well: identical, the bug is invisible.
# The second gives P − P/T ≠ 0, so ones catch it. A random dP has no such symmetry:
# dP − mean(dP) and dP − ⟨dP, P⟩ differ unless P is uniform, so both bugs show.
def plain_mean_backward(dprobs, softmax_cache):
    P = softmax_cache.probs
    return P * (dprobs - numpy.mean(dprobs, axis=-1, keepdims=True))


def shifted_backward(dprobs, softmax_cache):
    P = softmax_cache.probs
    return P * dprobs - P / P.shape[-1]


# %% jupyter={"source_hidden": true}
# Solution 2 (the test): each wrong backward against the library's, for dP = 1 and random dP.
probs, softmax_cache = softmax_forward(scores)
print("| backward | ones: max gap to the library | random: max gap |\n|---|---|---|")
for bad in (plain_mean_backward, shifted_backward):
    gaps = []
    for upstream in (numpy.ones_like(probs), rng.standard_normal(probs.shape)):
        gaps.append(numpy.max(numpy.abs(bad(upstream, softmax_cache)
                                        - softmax_backward(upstream, softmax_cache))))
    print(f"| {bad.__name__} | {gaps[0]:.1e} | {gaps[1]:.1e} |")

# %% jupyter={"source_hidden": true}
# Solution 3. The table keeps its rows (linear attention has the same four weights
# W_Q, W_K, W_V, W_O); the numbers change, and every one stays far below GRADCHECK_RTOL.
# Linear attention has no softmax (P = S), so its backward skips one step; ReLU has a kink at
# 0, but fourth-order differences with ε = 1e-5 only straddle it if a pre-activation lies
# within about 2ε·|∂pre/∂p| of 0 (the step is taken in the parameter p, not in pre).
linear_config = TransformerConfig(
    d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=8,
    attention="linear", activation="relu",
    attn_skip=True, mlp_skip=True, layer_norm=True,
)
linear_params = init_params(linear_config, seed=0)
linear_out, linear_cache = forward(linear_params, linear_config, tokens)
_, linear_grads = backward(dout, linear_cache)
linear_errors = check_gradients(
    lambda p: float(numpy.sum(forward(p, linear_config, tokens)[0] * dout)),
    linear_params, linear_grads)
print(f"linear attention + ReLU: largest relative error"
      f" {max(linear_errors.values()):.1e}")

# %% jupyter={"source_hidden": true}
# Solution 4. The three paths from x to x̂ (direct, through μ, through σ²) add up to the
# Jacobian ∂x̂_i/∂x_k = r (δ_ik − 1/D − x̂_i x̂_k/D), which is symmetric, so
# dx = Jᵀ dx̂ = r (dx̂ − mean(dx̂) − x̂ mean(dx̂ ⊙ x̂)): the projection below.
# check_layer needs a function of one input: close over the parameters.
from minimal_icl.layernorm import layernorm_backward, layernorm_forward
from minimal_icl.params import LayerNormParams

ln_params = LayerNormParams(gain=rng.standard_normal(D), bias=rng.standard_normal(D))


def my_layernorm_backward(dy, ln_cache):
    x_hat, rstd, gain = ln_cache  # (B, T, D), (B, T, 1), (D,)
    dx_hat = dy * gain
    return rstd * (dx_hat - numpy.mean(dx_hat, axis=-1, keepdims=True)
                   - x_hat * numpy.mean(dx_hat * x_hat, axis=-1, keepdims=True))


def ln_forward(x):
    return layernorm_forward(x, ln_params, config.ln_eps)


# %% jupyter={"source_hidden": true}
# Solution 4 (the checks).
ln_error = check_layer(ln_forward, my_layernorm_backward, tokens, seed=5)["input"]
y, ln_cache = ln_forward(tokens)
dy = rng.standard_normal(y.shape)
ln_gap = relative_residual(my_layernorm_backward(dy, ln_cache),
                           layernorm_backward(dy, ln_cache)[0])
print(f"LayerNorm backward: gradient check {ln_error:.1e},"
      f" against the library {ln_gap:.1e}")

# %% [markdown]
# ## Checks
#
# Running this tutorial is a test: these asserts use the package's shared tolerances.

# %%
assert max(errors.values()) <= GRADCHECK_RTOL, errors
assert right <= GRADCHECK_RTOL
assert wrong > 1e3 * GRADCHECK_RTOL, "the checker must catch a wrong softmax Jacobian"
assert last_only_residual <= IDENTITY_RTOL
assert numpy.allclose(row_sums, 1.0, rtol=0, atol=IDENTITY_RTOL)
assert numpy.min(block_cache.attn.weights) < 0.1  # not uniform (1/T = 0.2) at initialisation
assert numpy.max(block_cache.attn.weights) > 0.4
assert out.shape == (B, T, D) and dtokens.shape == tokens.shape
assert max(linear_errors.values()) <= GRADCHECK_RTOL, linear_errors
assert ln_error <= GRADCHECK_RTOL and ln_gap <= IDENTITY_RTOL
