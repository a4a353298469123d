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
# # 5. Implicit gradient descent, token by token
#
# Feed the context to a contextual block one token at a time. Each new token moves the
# implicit weight $W_i = W_0 + \Delta W_i$ of tutorial 2 (not by a small amount: in this
# page's random block the first move is about half of $\|W_0\|_F$). Dherin et al. (2025,
# arXiv:2507.16003, **Proposition 3.1 in v1**) write these moves as gradient steps.
# Symbols as in the [notation](../docs/notation.md) table: the step size is $\eta_x$ and the
# gradient $G_i$ (the paper writes $h$ and $\Delta_i$; here $h$ is the residual stream and
# $\Delta$ marks an update).
#
# **Proposition 3.1 (v1).** Let $A_i = A(c_1, \dots, c_i, x)$, $A_0 = A(x)$, and
# $W_i = W_0 + \Delta W_i$, $\Delta W_i = W_0 (A_i - A_0)\, A(x)^\top/\|A(x)\|^2$ (Theorem 2.2 for
# the prefix $c_1..c_i$, query $x$). Then
#
# $$
# W_{i+1} = W_i - \eta_x\, \nabla_W L_i(W_i),\qquad \eta_x = \frac{1}{\|A(x)\|^2},\qquad
# L_i(W) = \operatorname{trace}(G_i^\top W),\quad G_i = W_0 (A_i - A_{i+1})\, A(x)^\top,
# $$
#
# and $T_{W_i}(x) = T_{W_0}(c_1, \dots, c_i, x)$ for every $i$.
#
# Read it carefully: $L_i$ is **linear** in $W$, so $\nabla L_i = G_i$ at every $W$ and $L_i$
# has no minimiser unless $G_i = 0$ (it is a rewriting of the increment, not a loss fitted to
# data); the step size depends only on the query; every $G_i$ has the row $A(x)^\top$, so the
# whole path $W_i - W_0$ stays rank 1.
#
# **What we will see**: you write one step; the package's path agrees with it at every $i$
# and reproduces the prompt's output (relative residual $\le$ `IDENTITY_RTOL`); $\nabla L_i$ is
# what finite differences say (`GRADCHECK_RTOL`); the path is rank 1; the *factorised* path
# of the appendix ends at another matrix, whose rank we measure; and the **increments**
# $\|W_{i+1} - W_i\|_F$ shrink like $1/i$ for *random, untrained* softmax weights, and do not
# shrink for linear attention.

# %%
import matplotlib.pyplot as plt
import numpy

from minimal_icl import (
    GRADCHECK_RTOL,
    IDENTITY_RTOL,
    TransformerConfig,
    forward,
    init_params,
    relative_residual,
)
from minimal_icl.block import block_forward
from minimal_icl.data import regression_prompts
from minimal_icl.dynamics import factorised_path, implicit_path
from minimal_icl.exercises.tutorial_05 import check_path_step
from minimal_icl.experiments.common import loglog_slope, mean_se
from minimal_icl.gradcheck import numerical_gradient, relative_error
from minimal_icl.implicit import implicit_update

config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                           attention="softmax", activation="relu")
params = init_params(config, seed=0)  # random weights: nothing here needs training
N = 20
batch = regression_prompts(16, n_context=N, d=2, seed=1)
context, query = batch.context, batch.query
path = implicit_path(params, config, context, query)

# %% [markdown]
# | `path.` field or method | symbol | shape |
# |---|---|---|
# | `W0` | $W_0$, the block's first MLP weight | (M, D) = (32, 3) |
# | `A_query` | $A(x) = A_0$ | (B, D) |
# | `A_prefix[:, i]` | $A_i = A(c_1..c_i, x)$, $i = 0..N$ | (B, N+1, D) |
# | `step_size` | $\eta_x = 1/\lVert A(x)\rVert^2$ | (B,) |
# | `gradient(i)`, `loss(i, W)` | $G_i$, $L_i(W)$ | (B, M, D), (B,) |
# | `weights(i)` | $W_i$ | (B, M, D) |
# | `patch(i)` | $W_i - W_0$ as the patches `forward(..., patches=)` takes | one per block |
# | `increment_norms[:, i]` | $\lVert W_{i+1} - W_i\rVert_F$ | (B, N) |
#
# ## Your turn: one step of the path
#
# Write the step from $W_i$ to $W_{i+1}$ for a batch of prompts:
#
# $$
# G_i = W_0 (A_i - A_{i+1})\, A(x)^\top, \qquad W_{i+1} = W_i - \eta_x\, G_i,
# \qquad \eta_x = \frac{1}{\|A(x)\|^2}.
# $$
#
# Inputs: `W_i` (B, M, D), `W_0` (M, D), `A_i`, `A_next` $= A_{i+1}$ and `A_x` $= A(x)$, each
# (B, D). Return `(G_i, W_next)`, both (B, M, D). (For one prompt, $W_0 v$ is `W_0 @ v`;
# for a batch of vectors (B, D), `v @ W_0.T` is (B, M), and an outer product per prompt is
# `column[:, :, None] * row[:, None, :]`. $\eta_x$ is one number per prompt, shape (B,):
# `eta_x[:, None, None]` scales the (B, M, D) stack prompt by prompt.)

# %%
def path_step(W_i, W_0, A_i, A_next, A_x):
    """One step of Proposition 3.1: returns (G_i, W_{i+1}), each (B, M, D)."""
    ### BEGIN SOLUTION
    column = (A_i - A_next) @ W_0.T  # (B, M)  W_0 (A_i − A_{i+1})
    G_i = column[:, :, None] * A_x[:, None, :]  # (B, M, D)
    eta_x = 1.0 / numpy.sum(A_x * A_x, axis=-1)  # (B,)  1/‖A(x)‖²
    W_next = W_i - eta_x[:, None, None] * G_i
    ### END SOLUTION
    return G_i, W_next


# %%
check_path_step(path_step);

# %% [markdown]
# ## Every token is one step
#
# Run the step along the whole path, $i = 0, \dots, N-1$, and compare with
# $W_{i+1} = W_0 + \Delta W_{i+1}$ built directly from Theorem 2.2; then check the output identity
# $T_{W_i}(x) = T_{W_0}(c_1..c_i, x)$: the query alone with the weight $W_i$ behaves like the
# prompt with the first $i$ tokens.

# %%
step_residuals = []
for i in range(N):
    A = path.A_prefix
    G_i, W_next = path_step(path.weights(i), path.W0, A[:, i], A[:, i + 1], path.A_query)
    step_residuals.append(relative_residual(W_next, path.weights(i + 1)))

output_residuals, predictions = [], []
query_alone = query[:, None, :]  # (B, 1, D)
for i in range(N + 1):
    prefix = numpy.concatenate([context[:, :i], query_alone], axis=1)  # [c_1..c_i, x]
    with_prefix, _ = forward(params, config, prefix, last_only=True)
    patched, _ = forward(params, config, query_alone, patches=path.patch(i))
    output_residuals.append(relative_residual(patched[:, -1], with_prefix[:, -1]))
    predictions.append(patched[:, -1, -1])
print(f"W_i − η_x G_i against W_(i+1):     largest residual {max(step_residuals):.1e}")
print(f"T_(W_i)(x) against T_W(c_1..c_i, x): largest residual {max(output_residuals):.1e}")

# %% [markdown]
# The gradient of the linear "loss" $L_i(W) = \operatorname{trace}(G_i^\top W)$ is $G_i$ wherever
# we take it. Check it against finite differences of `path.loss` at $W_0$ and at a random $W$,
# for prompt 0 and step $i = 5$.

# %%
i = 5
random_W = numpy.random.default_rng(2).standard_normal(path.W0.shape)
gradient_errors = []
for W in (path.W0, random_W):
    numeric = numerical_gradient(lambda V: float(path.loss(i, V)[0]), W)
    gradient_errors.append(relative_error(path.gradient(i)[0], numeric))
print("relative error of ∇L_5 = G_5 at W_0 and at a random W:",
      [f"{e:.1e}" for e in gradient_errors])

# %% [markdown]
# The whole path is rank 1, with the same row $A(x)^\top$, and its increments are
#
# $$
# \|W_{i+1} - W_i\|_F = \eta_x \|G_i\|_F = \frac{\|W_0 (A_{i+1} - A_i)\|}{\|A(x)\|}
# $$
#
# (the norm of an outer product is the product of the norms). `path.increment_norms` holds
# them; compare with the matrices, and with the size of $W_0$ itself: the moves are not small.

# %%
path_ranks = [int(numpy.linalg.matrix_rank(path.weights(i) - path.W0).max())
              for i in range(1, N + 1)]
direct_norms = numpy.stack(
    [numpy.linalg.norm(path.weights(i + 1) - path.weights(i), axis=(1, 2))
     for i in range(N)], axis=1)  # (B, N)
residual_norms = relative_residual(direct_norms, path.increment_norms)
print("rank of W_i − W_0 for i = 1..N:", set(path_ranks),
      f"; increments against the matrices: residual {residual_norms:.1e}")
W0_norm = numpy.linalg.norm(path.W0)
first_move = numpy.median(path.increment_norms[:, 0]) / W0_norm
whole_move = numpy.median(
    numpy.linalg.norm(path.weights(N) - path.W0, axis=(1, 2))) / W0_norm
print(f"median over prompts: ‖W_1 − W_0‖_F/‖W_0‖_F = {first_move:.2f},"
      f" ‖W_N − W_0‖_F/‖W_0‖_F = {whole_move:.2f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.5), constrained_layout=True)
predictions = numpy.stack(predictions, axis=1)  # (B, N+1)
for b in range(5):
    axes[0].plot(range(N + 1), predictions[b], "o-", ms=3)
    axes[1].semilogy(range(N), path.increment_norms[b], "o-", ms=3)
axes[0].set_xlabel("tokens consumed i")
axes[0].set_ylabel(r"prediction $T_{W_i}(x)$")
axes[0].set_title("five prompts along their implicit paths")
axes[1].set_xlabel("i")
axes[1].set_ylabel(r"$\|W_{i+1} - W_i\|_F$")
axes[1].set_title("increments along the path (random weights)")
plt.show()

# %% [markdown]
# ## The factorised path ends elsewhere
#
# The appendix of v1 consumes the tokens **from the front** while the rest stays in context.
# Write $A_{>i} = A(c_{i+1}, \dots, c_N, x)$ for the query's MLP input once $c_1..c_i$ are
# consumed ($A_{>0} = A(C, x)$, $A_{>N} = A(x)$; the field `factorised.A_suffix[:, i]`).
# Token $c_i$ contributes
#
# $$
# \Delta A(c_i) = A_{>i-1} - A_{>i} = A(c_i, \dots, c_N, x) - A(c_{i+1}, \dots, c_N, x),
# $$
#
# and each step is Theorem 2.2 applied to $W_{i-1}$, removing $c_i$:
#
# $$
# W_i = W_{i-1}(I + \eta_i F_i),\qquad F_i = \Delta A(c_i)\, A_{>i}^\top,\qquad
# \eta_i = \frac{1}{\|A_{>i}\|^2}.
# $$
#
# By induction $W_i A_{>i} = W_0 A_{>0}$, so $T_{W_N}(x) = T_{W_0}(C, x)$, like $W_0 + \Delta W(C)$.
# But $W_N - W_0$ is another matrix. Expanding the product, every term of $W_N - W_0$ starts
# with $W_0 \Delta A(c_j)$ and ends with some $A_{>k}^\top$, so
#
# $$
# \operatorname{rank}(W_N - W_0) \le
# \min\big(N,\ M,\ \dim\operatorname{span}\{\Delta A(c_1), \dots, \Delta A(c_N)\}\big),
# $$
#
# and $\dim\operatorname{span}\Delta A \le D$ (here $D = 3$). With LayerNorm before the MLP every
# $A_{>i}$ is $\gamma \odot n_i + \beta$ (LN2's gain $\gamma$ and bias $\beta$) with $n_i$ of zero
# mean over its $D$ features; in the difference $\Delta A(c_i) = \gamma \odot (n_{i-1} - n_i)$
# the bias cancels, so all the $\Delta A$ lie in one
# $(D-1)$-dimensional subspace and the bound is $D - 1$. So $W_N - W_0$, an $M \times D$
# matrix, has rank at most $D$ without LayerNorm (generically $\min(N, D)$: full column rank
# once $N \ge D$) and at most $D - 1$ with it (rank-deficient): far below $M = 32$ either way,
# though no longer 1. Measure it:
# the rank of $W_N - W_0$ (`factorised.delta_W(N)`, (B, M, D)) and the dimension of the span
# of the $\Delta A(c_i)$ (`factorised.delta_A`, (B, N, D)), without and with LayerNorm, and
# for short contexts $N = 1, 2, 3$.

# %%
factorised = factorised_path(params, config, context, query)
with_context, _ = forward(params, config, batch.tokens, last_only=True)
factorised_out, _ = forward(params, config, query_alone, patches=factorised.patch(N))
residual_factorised = relative_residual(factorised_out[:, -1], with_context[:, -1])
(update,) = implicit_update(params, config, context, query)
W_N_minus_W0 = factorised.weights(N) - factorised.W0
norm_ratio = (numpy.linalg.norm(W_N_minus_W0, axis=(1, 2))
              / numpy.linalg.norm(update.delta_W, axis=(1, 2)))
print(f"factorised endpoint: T_(W_N)(x) against T_W(C, x): residual {residual_factorised:.1e};"
      f" ‖W_N − W_0‖/‖ΔW(C)‖ ≥ {norm_ratio.min():.2f} (ΔW(C) has the minimum norm)")

# %%
def numerical_rank(X, rtol=1e-10):
    """Singular values above rtol × the largest, per prompt: X (B, m, n) -> (B,) ints.
    (Rounding leaves singular values of about 1e-16 × the largest where the rank drops.)"""
    s = numpy.linalg.svd(X, compute_uv=False)  # (B, min(m, n)), descending
    return numpy.sum(s > rtol * s[:, :1], axis=1)


ranks = {}
with_ln = dict(attn_skip=True, layer_norm=True)
for name, switches in (("no LayerNorm", {}), ("LN + attn skip", with_ln)):
    cfg = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32, **switches)
    p = init_params(cfg, seed=0)
    for n in (1, 2, 3, N):
        f = factorised_path(p, cfg, context[:, :n], query)
        ranks[name, n] = (set(numerical_rank(f.delta_W(n)).tolist()),
                          set(numerical_rank(f.delta_A).tolist()))
print("rank(W_N − W_0), dim span ΔA over the 16 prompts:")
for (name, n), (r, s) in ranks.items():
    print(f"  {name:15s} N = {n:2d}: rank {sorted(r)}, dim span ΔA {sorted(s)}")

# %% [markdown]
# The rank is exactly $\min(N, \dim\operatorname{span}\Delta A)$: 1, 2, 3, 3 without LayerNorm
# ($D = 3$), and 1, 2, 2, 2 with it ($D - 1 = 2$). For $N = 1$ the factorised step is Theorem 2.2
# itself, $W_1 = W_0 + \Delta W(C)$.
#
# ## Why the increments shrink: the softmax weight of a new token
#
# Take one head with softmax attention, scores $S_j$ of the query against token $j$, values
# $v_j$. After $i$ tokens the query's head output is a weighted mean
# $o_i = (\sum_{j \le i} e^{S_j} v_j + e^{S_x} v_x)/\ell_i$ with
# $\ell_i = \sum_{j\le i} e^{S_j} + e^{S_x}$. Adding $c_{i+1}$:
#
# $$
# o_{i+1} - o_i = p_{i+1}\,(v_{i+1} - o_i),\qquad p_{i+1} = \frac{e^{S_{i+1}}}{\ell_{i+1}}
# \approx \frac{1}{i+2}\quad\text{when the scores are comparable,}
# $$
#
# ($i+1$ context tokens and the query share the weight). With one head and neither skip nor
# LayerNorm, $A_i = W_O o_i$, so $A_{i+1} - A_i = p_{i+1} W_O (v_{i+1} - o_i)$. For **any**
# weights, trained or not, with context tokens exchangeable (independent and identically
# distributed given $w$ and $x$), the weight of the newest token is on average
# $\mathbb{E}[p_{i+1}] = \mathbb{E}[1 - P_{x,x}]/(i+1)$ ($P_{x,x}$ the query's own weight once
# $i + 1$ context tokens are in):
# the increment $\|W_0(A_{i+1} - A_i)\|/\|A(x)\|$ is of order $1/i$ **on average**. One prompt
# need not follow it: with sharp attention (large scores) most new tokens get almost no
# weight and a few get almost all of it. Measure $p_{i+1}$ on random weights, from the
# query's row $P_{x,\cdot}$ of the attention weights of one run on the whole prompt: a
# prefix's weights are their renormalisations, so
# $p_{i+1} = P_{x,i+1}/(\sum_{j \le i+1} P_{x,j} + P_{x,x})$.

# %%
n_long = 200
long_batch = regression_prompts(200, n_context=n_long, d=2, seed=2)
steps = numpy.arange(1, n_long + 1)  # the step i → i + 1 adds token c_(i+1); i = steps − 1
random_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                  attention="softmax", activation="relu")
random_params = init_params(random_config, seed=0)
_, cache = block_forward(long_batch.tokens, random_params.blocks[0], random_config,
                         last_only=True)
# weights (B, H, 1, T) with last_only: head 0, the query's row over the N + 1 tokens
P_x = numpy.asarray(cache.attn.weights[:, 0, 0, :])  # (B, N+1)
ell = numpy.cumsum(P_x[:, :n_long], axis=1) + P_x[:, n_long:]  # ℓ_(i+1), up to a constant
scaled = P_x[:, :n_long] / ell * (steps + 1)  # (B, N): (i+2)·p_(i+1), prompt by prompt
scaled_weight, scaled_se = mean_se(scaled, axis=0)  # mean over prompts and its s.e.
print(f"(i+2)·p_(i+1): median over i {numpy.median(scaled_weight):.2f}; at i = 0, 9, 99, 199:",
      numpy.round(scaled_weight[[0, 9, 99, 199]], 2), "± s.e.",
      numpy.round(scaled_se[[0, 9, 99, 199]], 2))
distance = numpy.abs(scaled_weight - 1.0) / scaled_se  # |mean − 1| in standard errors
worst = int(numpy.argmax(scaled_se))
print(f"lengths within 1 s.e. of 1: {numpy.mean(distance <= 1):.0%}, within 2 s.e.:"
      f" {numpy.mean(distance <= 2):.0%}; largest s.e. {scaled_se[worst]:.2f} at i = {worst},"
      f" where one prompt's (i+2)·p_(i+1) is {scaled[:, worst].max():.0f}")

# %% [markdown]
# Now the increments over 200 prompts with $N = 200$, and their log-log slope for
# $i + 1 \ge 10$.
#
# **Predict before you run the next cell**: un-normalised linear attention adds
# $S_{i+1} v_{i+1}$ (its weight is the score itself, $P = S$), a weight that does not
# depend on $i$. Do its increments decay?

# %%
curves, slopes = {}, {}
for attention in ("softmax", "linear"):
    random_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                      attention=attention, activation="relu")
    random_params = init_params(random_config, seed=0)
    long_path = implicit_path(random_params, random_config, long_batch.context,
                              long_batch.query)
    curves[attention] = mean_se(long_path.increment_norms, axis=0)  # (mean, se), each (N,)
    slopes[attention] = loglog_slope(steps[9:], curves[attention][0][9:])
print("log-log slope of the mean increment, i + 1 ≥ 10:",
      {k: round(v, 3) for k, v in slopes.items()})

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
for attention, color in (("softmax", "tab:blue"), ("linear", "tab:orange")):
    mean, se = curves[attention]
    ax.loglog(steps, mean, color=color,
              label=f"{attention}, random weights (slope {slopes[attention]:.2f})")
    ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.25)
ax.loglog(steps, 3.0 / steps, "k--", lw=0.8, label=r"$\propto 1/i$")
ax.set_xlabel("context length after the step, i + 1")
ax.set_ylabel(r"$\|W_{i+1} - W_i\|_F$ (mean ± s.e.)")
ax.set_title("increments of untrained blocks")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# On average over prompts the new token's weight is $\approx 1/(i+2)$ at every length: the
# mean of $(i+2)\,p_{i+1}$ has median 1.00 over $i$, and lies within two standard errors of 1
# at 90 % of the 200 lengths (within one at 63 %). The standard error is about 0.02 at $i = 0$
# and 0.1 at long contexts, with jumps where one prompt's sharp attention gives the new token
# most of the weight (at $i = 194$ one prompt has $(i+2)\,p_{i+1} \approx 128$, a weight of
# 0.65, and the standard error there is 0.64). The softmax increments fall with
# slope $\approx -1$, and linear attention's do not fall at all. So the *rate* of convergence of
# the implicit path is a property of softmax normalisation, present before any training; what
# training changes has to be read against this random-weight baseline (tutorial 6 does).
#
# ## Summary
#
# * One token is one step: $W_{i+1} = W_i - \eta_x G_i$, $G_i = W_0(A_i - A_{i+1})A(x)^\top$,
#   $\eta_x = 1/\|A(x)\|^2$, and $T_{W_i}(x) = T_{W_0}(c_1..c_i, x)$.
# * The "loss" is linear, $L_i(W) = \operatorname{trace}(G_i^\top W)$, so
#   $\nabla L_i = G_i$ everywhere and nothing is minimised; the path
#   $W_i - W_0 = \Delta W_i$ stays rank 1.
# * Increments: $\|W_{i+1} - W_i\|_F = \|W_0(A_{i+1} - A_i)\|/\|A(x)\|$, of order $p_{i+1}$; for
#   softmax attention with any weights $\mathbb{E}[p_{i+1}] = \mathbb{E}[1 - P_{x,x}]/(i+1)$,
#   so of order $1/i$ on average over contexts drawn alike (not prompt by prompt); no
#   decay for linear attention.
# * The factorised path $W_i = W_{i-1}(I + \eta_i F_i)$ reaches the same output with another
#   matrix: $\operatorname{rank}(W_N - W_0) \le \min(N, M, \dim\operatorname{span}\Delta A)$,
#   $\le D - 1$ with LayerNorm.

# %% [markdown]
# ## Exercises
#
# 1. *(On paper.)* Derive Proposition 3.1 from Theorem 2.2: write $W_{i+1} - W_i$ with the
#    formula for $\Delta W_i$, and show that it equals $-\eta_x G_i$ and that $G_i$ is the gradient
#    of $L_i$.
# 2. *(On paper, then in code.)* Show that with uniform attention (all scores equal) the
#    increment is exactly $\|W_0 W_O (v_{i+1} - \bar v_i)\|/((i+2)\|A(x)\|)$, $\bar v_i$ the mean
#    of $v_1..v_i, v_x$. Test it: set the query weight $W_Q$ to zero (then every score is 0;
#    the parameters are NamedTuples, so build them with `_replace`:
#    `params._replace(blocks=(block._replace(attn=block.attn._replace(W_Q=0 * block.attn.W_Q)),))`)
#    and check that $(i+2)\,\|W_{i+1} - W_i\|_F$ does not decay.
# 3. *(Prediction.)* Linear attention's increments do not decay. Predict what an attention skip
#    and a LayerNorm before the MLP do to them ($u = \mathrm{LN2}(x + A)$), then measure the
#    slope for both kinds of attention (`attn_skip=True, layer_norm=True`; the flag puts
#    LN1 before the attention as well).
# 4. *(Extension.)* Repeat the rank measurement of the factorised path for a block with
#    $D = 5$ (regression tokens with $d = 4$), without and with LayerNorm, for $N = 1..6$.
#    Which bound is reached?

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** $W_{i+1} - W_i = \Delta W_{i+1} - \Delta W_i
# = W_0\big[(A_{i+1} - A_0) - (A_i - A_0)\big] A(x)^\top/\|A(x)\|^2
# = -\frac{1}{\|A(x)\|^2}\, W_0 (A_i - A_{i+1}) A(x)^\top = -\eta_x G_i.$
# The row $A(x)^\top = A_0^\top$ and the step size do not depend on $i$: the query alone fixes
# both. For the gradient, $L_i(W) = \operatorname{trace}(G_i^\top W) = \sum_{m,d} (G_i)_{md} W_{md}$,
# so $\partial L_i/\partial W_{md} = (G_i)_{md}$, at every $W$. Since $W_0 + \Delta W_i$ solves
# $X A(x) = W_0 A_i$ (Theorem 2.2 with the first $i$ tokens), $T_{W_i}(x) = T_{W_0}(c_1..c_i, x)$.

# %% jupyter={"source_hidden": true}
# Solution 2. All scores 0: p_(i+1) = 1/(i+2) exactly, and
# A_(i+1) − A_i = W_O (v_(i+1) − v̄_i)/(i+2). The numerator is a random vector whose size
# does not shrink, so (i+2)·increment stays flat.
block = params.blocks[0]
no_W_Q = block.attn._replace(W_Q=0.0 * block.attn.W_Q)  # every score q·k/√K is 0
uniform_params = params._replace(blocks=(block._replace(attn=no_W_Q),))
uniform = implicit_path(uniform_params, config, long_batch.context, long_batch.query)
uniform_mean = numpy.mean(uniform.increment_norms, axis=0)  # (N,)
scaled = numpy.mean(uniform.increment_norms * (steps + 1), axis=0)  # (i+2)·increment
print(f"uniform attention: slope {loglog_slope(steps[9:], uniform_mean[9:]):.3f};"
      f" (i+2)·increment at i = 0, 49, 199: {scaled[[0, 49, 199]].round(2)}")
# the formula itself, token by token: ‖W_0 W_O (v_(i+1) − v̄_i)‖/((i+2)‖A(x)‖)
v = long_batch.context @ block.attn.W_V.T  # (B, N, K)  v_1..v_N
v_x = long_batch.query @ block.attn.W_V.T  # (B, K)
sums = numpy.cumsum(v, axis=1) - v + v_x[:, None, :]  # v_1 + … + v_i + v_x at step i
v_bar = sums / steps[None, :, None]  # (B, N): the mean of i + 1 values
columns = (v - v_bar) @ block.attn.W_O.T @ block.mlp.W1.T  # (B, N, M)
A_x = long_batch.query @ block.attn.W_V.T @ block.attn.W_O.T  # (B, D): A(x) = W_O v_x
formula = (numpy.linalg.norm(columns, axis=-1) / (steps + 1)
           / numpy.linalg.norm(A_x, axis=-1, keepdims=True))
print(f"formula against increment_norms: relative residual"
      f" {relative_residual(formula, uniform.increment_norms):.1e}")

# %% jupyter={"source_hidden": true}
# Solution 3. Softmax: unchanged (the new token still gets a weight ~1/(i+2), and LN2 is
# smooth).
# Linear attention: now ~1/i as well. A(c_1..c_i, x) grows like i, LN2 divides by its norm
# ~ i, so u_i converges and its increments are ~1/i. Normalisation again, not learning.
for attention in ("softmax", "linear"):
    ln_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                  attention=attention, attn_skip=True, layer_norm=True)
    ln_path = implicit_path(init_params(ln_config, seed=0), ln_config,
                            long_batch.context, long_batch.query)
    ln_mean = numpy.mean(ln_path.increment_norms, axis=0)
    ln_slope = loglog_slope(steps[9:], ln_mean[9:])
    print(f"{attention:8s} with skip + LayerNorm: slope {ln_slope:.2f}")

# %% jupyter={"source_hidden": true}
# Solution 4. D = 5: the rank is min(N, 5) without LayerNorm and min(N, 4) = min(N, D − 1) with
# it, the bound min(N, M, dim span ΔA) reached (M = 32 never binds here).
wide = regression_prompts(8, n_context=6, d=4, seed=3)
for switches in ({}, dict(attn_skip=True, layer_norm=True)):
    cfg5 = TransformerConfig(d_token=5, n_blocks=1, n_heads=1, d_head=8, d_mlp=32, **switches)
    p5 = init_params(cfg5, seed=0)
    found = [int(numerical_rank(factorised_path(p5, cfg5, wide.context[:, :n],
                                                wide.query).delta_W(n)).max())
             for n in range(1, 7)]
    print("LayerNorm" if switches else "no LayerNorm", "ranks for N = 1..6:", found)

# %% [markdown]
# ## Checks

# %%
assert max(step_residuals) <= IDENTITY_RTOL  # your step is the path's step
assert max(output_residuals) <= IDENTITY_RTOL  # T_(W_i)(x) = T_W(c_1..c_i, x)
assert max(gradient_errors) <= GRADCHECK_RTOL  # ∇L_i = G_i at any W
assert set(path_ranks) == {1}
assert residual_norms <= IDENTITY_RTOL
assert residual_factorised <= IDENTITY_RTOL
assert norm_ratio.min() >= 1.0 - IDENTITY_RTOL  # ΔW(C) has the minimum norm
assert [max(ranks["no LayerNorm", n][0]) for n in (1, 2, 3, N)] == [1, 2, 3, 3]  # min(N, D)
assert [max(ranks["LN + attn skip", n][0]) for n in (1, 2, 3, N)] == [1, 2, 2, 2]  # min(N, D − 1)
assert 0.8 <= numpy.median(scaled_weight) <= 1.25  # p_(i+1) ≈ 1/(i+2)
assert numpy.mean(distance <= 2) >= 0.8  # on average over prompts, length by length
assert first_move >= 0.25  # the moves are not small against W_0
assert -1.2 <= slopes["softmax"] <= -0.8  # ~1/i for random softmax weights
assert abs(slopes["linear"]) <= 0.1  # no decay for linear attention
