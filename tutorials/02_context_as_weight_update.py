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
# # 2. Context as a weight update
#
# The central result of Dherin et al. (2025, arXiv:2507.16003), **Theorem 2.2 in v1**: a
# self-attention layer followed by an MLP turns its context into an exact **rank-1 update**
# of the MLP's first weight matrix. Symbols follow the [notation](../docs/notation.md) table.
#
# **Setting.** A *contextual block* $T_W = M_W \circ A$: a contextual layer $A$ (here
# self-attention) maps a query token $x$, optionally with a context $C = [c_1, \dots, c_N]$,
# to a vector $A(C, x)$ at the query position; then the MLP $M_W(u) = f(Wu + b)$ reads that
# vector as its input $u$, where $W$ is the first dense layer of the MLP and $f$ is
# everything after it (here the activation and the second layer, $f(s) = W' g(s) + b'$).
# Outputs are read at the query.
#
# **Theorem 2.2 (v1).** For any $Y \subseteq C$ with $A(C \setminus Y, x) \neq 0$,
#
# $$
# T_W(C, x) = T_{W + \Delta W(Y)}(C \setminus Y, x),\qquad
# \Delta W(Y) = \frac{\big(W\, \delta A_x(Y)\big)\, A(C\setminus Y, x)^\top}{\|A(C\setminus Y, x)\|^2},
# $$
#
# with the context vector $\delta A_x(Y) = A(C, x) - A(C \setminus Y, x)$.
#
# **Corollary ($Y = C$).** $T_W(C, x) = T_{W + \Delta W}(x)$ with
# $\Delta W = (W\,\Delta A)\, A(x)^\top / \|A(x)\|^2$ and $\Delta A = A(C, x) - A(x)$: the query
# *alone*, run through the patched block, gives the with-context output.
#
# **Proof, in one line.** With $a = A(C\setminus Y, x)$ and $\delta = \delta A_x(Y)$:
# $(W + \Delta W)\,a = W a + W\delta\,\dfrac{a^\top a}{\|a\|^2} = W(a + \delta) = W A(C, x)$,
# so $f$ receives the same input. $\blacksquare$
#
# Nothing here assumes training: the identity holds for **any** weights.
#
# **What we will do** (in float64, relative residual $\le$ `IDENTITY_RTOL` $= 10^{-12}$; the
# relative residual of $a$ against $b$ is $\max|a - b| / \max(\max|a|, \max|b|)$,
# `relative_residual`)
#
# 1. **write $\Delta W$ yourself** from two forward caches, and check it against the
#    package's `implicit_update` and by running the patched block on the query alone;
# 2. measure how large the update is: it is not a small perturbation;
# 3. see that $\Delta W$ has rank 1 and depends on the query;
# 4. check the same identity on a block trained on in-context regression, and measure the
#    update there.

# %%
import inspect
import os
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy

from minimal_icl import (
    IDENTITY_RTOL,
    TransformerConfig,
    forward,
    init_params,
    relative_residual,
)
from minimal_icl.data import baseline_mse, regression_prompts
from minimal_icl.exercises.tutorial_02 import check_delta_W
from minimal_icl.experiments.common import cos_frobenius
from minimal_icl.implicit import implicit_update, rank_one_update
from minimal_icl.train import paper_setting, train_setup

FAST = os.environ.get("MINIMAL_ICL_FAST") == "1"  # the test suite's short run

# %% [markdown]
# ## The paper's block, with random weights
#
# One block, softmax attention, ReLU MLP, no skip connections, no LayerNorm — the kind of
# block of the paper's experiments (here one head of width $K = 8$ and $M = 32$). Prompts are
# in-context linear regression in $d = 2$: tokens $(x_j; y_j) \in \mathbb{R}^3$ with
# $y_j = \langle w, x_j\rangle$, then the query $(x_q; 0)$.
#
# Run the block twice: on the whole prompt $[C, x]$ and on the query alone $[x]$. Each run
# returns a cache; `cache.blocks[0].u` is the MLP input. Without skips and LayerNorm the MLP
# input *is* the attention output ($u = h = A$), so at the query (the last position)
# it holds $A(C, x)$ in the first run and $A(x)$ in the second.

# %%
config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                           attention="softmax", activation="relu")
params = init_params(config, seed=0)
batch = regression_prompts(64, n_context=20, d=2, seed=1)
context, query = batch.context, batch.query  # (B, N, D), (B, D)
query_alone = query[:, None, :]  # (B, 1, D): the prompt without its context

# T_W(C, x) and T_W(x), with their caches
with_context, cache_with = forward(params, config, batch.tokens, last_only=True)
unpatched, cache_alone = forward(params, config, query_alone)
W = params.blocks[0].mlp.W1  # (M, D)
print("A(C, x):", cache_with.blocks[0].u[:, -1].shape, "  A(x):",
      cache_alone.blocks[0].u[:, -1].shape, "  W:", W.shape)

# %% [markdown]
# ## Your turn: the update from the two caches
#
# The corollary of Theorem 2.2 (v1):
#
# $$
# \Delta W = \frac{(W\,\Delta A)\, A(x)^\top}{\|A(x)\|^2},\qquad \Delta A = A(C, x) - A(x).
# $$
#
# For every prompt at once, with `A_C` and `A_x` of shape `(B, D)` (one row per prompt) and
# `W` of shape `(M, D)`, compute `delta_A` $= \Delta A$, the column $W\Delta A$ (shape
# `(B, M)`: `delta_A @ W.T`), the row $A(x)/\|A(x)\|^2$ (shape `(B, D)`: each prompt
# divides by its own $\|A(x)\|^2$, `numpy.sum(A_x**2, axis=-1, keepdims=True)` of shape
# `(B, 1)`), and their outer product per prompt, shape `(B, M, D)`
# (`column[:, :, None] * row[:, None, :]`), stored in `delta_W`.

# %%
def delta_W_from_caches(W, cache_with, cache_alone):
    """ΔW = (W ΔA) A(x)ᵀ/‖A(x)‖² per prompt, from the forward caches of [C, x] and [x]."""
    A_C = cache_with.blocks[0].u[:, -1]  # (B, D) A(C, x): the MLP input at the query
    A_x = cache_alone.blocks[0].u[:, -1]  # (B, D) A(x): the same, query alone
    ### BEGIN SOLUTION
    delta_A = A_C - A_x  # (B, D)
    column = delta_A @ W.T  # (B, M)  W ΔA
    row = A_x / numpy.sum(A_x * A_x, axis=-1, keepdims=True)  # (B, D)  A(x)/‖A(x)‖²
    delta_W = column[:, :, None] * row[:, None, :]  # (B, M, D)
    ### END SOLUTION
    return delta_W


# %% [markdown]
# The check runs your function on fresh prompts, compares it with the package's
# `implicit_update`, and runs the query alone through the patched block
# `forward(x, patches=...)`, which must give the with-context output.

# %%
check_delta_W(delta_W_from_caches, params, config);

# %% [markdown]
# ## The package's update, and the patched forward
#
# `implicit_update(params, config, context, query)` computes the same $\Delta W$ (from the
# engine's own block forward, with the same two runs), and returns one `ImplicitUpdate` per
# block, usable directly as the `patches` argument of `forward`. Its core is
# `minimal_icl.implicit.rank_one_update(W, delta, a)`, called with $\delta = \Delta A$ and
# $a = A(x)$; here are its lines (read from the package, not copied). `inverse_direction`
# returns $a/\|a\|^2$ and raises `DegenerateQueryError` where $a = 0$ (`block` and `vector`
# only name the block and the vector in that error); `xp` is the array namespace of the
# inputs (NumPy here; CuPy or array_api_strict arrays get theirs), `W.mT` is the transpose
# of the last two axes, and the second branch serves a weight of shape `(B, M, D)`, one per
# prompt, which the factorised path of tutorial 5 needs.

# %%
source = inspect.getsource(rank_one_update).splitlines()
docstring_end = [i for i, line in enumerate(source) if '"""' in line][1]
print("\n".join(source[docstring_end + 1:]))  # the body, after the docstring

# %%
(update,) = implicit_update(params, config, context, query)
patched, _ = forward(params, config, query_alone, patches=(update,))  # T_{W+ΔW}(x)

residual_random = relative_residual(patched[:, -1], with_context[:, -1])
residual_unpatched = relative_residual(unpatched[:, -1], with_context[:, -1])
print("ΔW:", update.delta_W.shape, "(B, M, D)")
print(f"relative residual, T_W(C,x) vs T_(W+ΔW)(x): {residual_random:.1e}")
print(f"and without the patch, T_W(x) is off by:    {residual_unpatched:.1e}")

# %%
fig, ax = plt.subplots(figsize=(4.5, 4), constrained_layout=True)
ax.scatter(with_context[:, -1, -1], unpatched[:, -1, -1], s=14, label="query alone, $W$")
ax.scatter(with_context[:, -1, -1], patched[:, -1, -1], s=14, marker="x",
           label=r"query alone, $W + \Delta W$")
lims = ax.get_xlim()
ax.plot(lims, lims, color="gray", lw=0.8)
ax.set_xlabel(r"prediction with context $T_W(C, x)$")
ax.set_ylabel("prediction without context")
ax.set_title("the patch replaces the context")
ax.legend()
plt.show()

# %% [markdown]
# ## The update is not small
#
# "Update" suggests a small correction of $W$. Nothing in the theorem makes it small:
# $\Delta W$ maps $A(x)$ to $W\Delta A$ and every direction orthogonal to $A(x)$ to zero, so
#
# $$
# \|\Delta W\|_F = \frac{\|W\,\Delta A\|}{\|A(x)\|},
# $$
#
# and a short $A(x)$ makes it large. Measured on this random block (medians over the 64
# prompts):

# %%
norm_W = numpy.linalg.norm(W)
norm_dW = numpy.linalg.norm(update.delta_W, axis=(-2, -1))  # (B,)
norm_A_x = numpy.linalg.norm(update.u_without, axis=-1)  # (B,)  ‖A(x)‖
norm_W_dA = numpy.linalg.norm(update.column, axis=-1)  # (B,)  ‖W ΔA‖
print("| ‖W‖_F | median ‖ΔW‖_F | largest ‖ΔW‖_F | median ‖A(x)‖ | median ‖W ΔA‖ |")
print("|---|---|---|---|---|")
print(f"| {norm_W:.2f} | {numpy.median(norm_dW):.2f} | {norm_dW.max():.2f} |"
      f" {numpy.median(norm_A_x):.3f} | {numpy.median(norm_W_dA):.3f} |")

# %% [markdown]
# The update is of the size of the weight itself: here the median $\|\Delta W\|_F$ is
# 3.75 against $\|W\|_F = 5.45$, and the largest is 6.79. The trained block at the end of
# the page measures it again, before and after training.
#
# ## Rank 1
#
# $\Delta W$ is a column $W\,\Delta A \in \mathbb{R}^M$ times a row
# $A(x)^\top/\|A(x)\|^2 \in \mathbb{R}^D$ (`update.column`, `update.row`), so it has exactly one
# non-zero singular value; the others are rounding.

# %%
singular_values = numpy.linalg.svd(update.delta_W, compute_uv=False)  # (B, D)
ratio = singular_values[:, 1] / singular_values[:, 0]
outer = update.column[:, :, None] * update.row[:, None, :]
print(f"largest σ₂/σ₁ over {len(ratio)} prompts: {ratio.max():.1e}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
image = axes[0].imshow(update.delta_W[0], aspect="auto", cmap="RdBu_r")
axes[0].set_title(r"$\Delta W$ of prompt 0 ($M \times D$)")
axes[0].set_xlabel("input coordinate")
axes[0].set_ylabel("hidden unit")
fig.colorbar(image, ax=axes[0])
for k in range(singular_values.shape[1]):
    axes[1].semilogy(numpy.maximum(singular_values[:, k], 1e-300), "o", ms=3,
                     label=f"σ{k + 1}")
axes[1].set_xlabel("prompt")
axes[1].set_ylabel("singular value")
axes[1].set_title(r"singular values of $\Delta W$")
axes[1].legend()
plt.show()

# %% [markdown]
# ## The update depends on the query
#
# Both factors depend on the query: the row is the query's own attention output $A(x)$, and
# the column $W\,\Delta A = W(A(C, x) - A(x))$ changes with $x$ too. The same context gives a
# different $\Delta W$ for a different query. Take the patch computed for one query and apply
# it to another query of the same task: the result is no longer the with-context output.

# %%
other = regression_prompts(64, n_context=20, d=2, seed=2)
# same tasks and contexts, new query inputs: keep the context, swap in other queries
swapped_query = numpy.concatenate([other.query_x, numpy.zeros((64, 1))], axis=1)  # (B, D)
swapped_tokens = numpy.concatenate([context, swapped_query[:, None, :]], axis=1)
with_context_2, _ = forward(params, config, swapped_tokens, last_only=True)
(update_2,) = implicit_update(params, config, context, swapped_query)
own_patch, _ = forward(params, config, swapped_query[:, None, :], patches=(update_2,))
borrowed_patch, _ = forward(params, config, swapped_query[:, None, :], patches=(update,))

residual_own = relative_residual(own_patch[:, -1], with_context_2[:, -1])
residual_borrowed = relative_residual(borrowed_patch[:, -1], with_context_2[:, -1])
alignment = cos_frobenius(update.delta_W, update_2.delta_W)
print(f"own patch:      relative residual {residual_own:.1e}")
print(f"borrowed patch: relative residual {residual_borrowed:.1e}")
print(f"cos_F(ΔW(x), ΔW(x')) over prompts: median {numpy.median(alignment):.2f}")

# %%
fig, ax = plt.subplots(figsize=(4.5, 3.2), constrained_layout=True)
ax.hist(alignment, bins=20, range=(-1, 1), color="tab:purple")
ax.set_xlabel(r"$\cos_F(\Delta W(x), \Delta W(x'))$, same context")
ax.set_ylabel("prompts")
plt.show()

# %% [markdown]
# ## A trained block
#
# The theorem does not care whether the weights were trained. Train the block of
# `paper_setting()` on in-context regression (its 20 000 Adam steps take about 10 s here;
# 300 steps under `MINIMAL_ICL_FAST=1`, the test suite's short run), and check the identity
# again on fresh prompts. From the paper: $d = 2$, $N = 50$ pairs, one block of softmax
# attention and an MLP, no MLP skip, no LayerNorm. The package's own choices for the rest (see
# the docstring of `paper_setting`): no attention skip either, **8 heads of width $K = 2$**, a ReLU MLP of width
# $M = 128$, Adam. The baselines are scored on the same fresh prompts as the model: predicting
# 0 (error $E\,y^2 = d = 2$ in expectation), and one step of gradient descent on the context
# from $\theta_0 = 0$ with the step $\eta^* = 1/(1 + (d+1)/N)$.

# %%
setup = paper_setting(fast=FAST)  # 20 000 steps; 300 with MINIMAL_ICL_FAST=1
trained = train_setup(setup, seed=0)  # starts from init_params(setup.config, seed=0)
test = regression_prompts(256, n_context=setup.n_context, d=setup.d, seed=3)
trained_with_context, _ = forward(trained.params, setup.config, test.tokens,
                                  last_only=True)
trained_mse = float(numpy.mean((trained_with_context[:, -1, -1] - test.target) ** 2))
baselines = baseline_mse(test)  # zero predictor, one step of GD, least squares
print(f"{setup.steps} Adam steps, {setup.config.n_heads} heads"
      f" of width {setup.config.d_head}")
print("| on 256 fresh prompts | MSE |\n|---|---|")
print(f"| trained block | {trained_mse:.3f} |")
print(f"| predict 0 | {baselines['zero']:.3f} |")
print(f"| one step of GD (η*) | {baselines['one_step_gd']:.3f} |")

# %% [markdown]
# The identity and the rank of $\Delta W$ on the trained block:

# %%
(trained_update,) = implicit_update(trained.params, setup.config, test.context,
                                    test.query)
trained_patched, _ = forward(trained.params, setup.config, test.query[:, None, :],
                             patches=(trained_update,))
residual_trained = relative_residual(trained_patched[:, -1], trained_with_context[:, -1])
trained_sv = numpy.linalg.svd(trained_update.delta_W, compute_uv=False)
trained_ratio = numpy.max(trained_sv[:, 1] / trained_sv[:, 0])
print(f"trained block: relative residual {residual_trained:.1e},"
      f" largest σ₂/σ₁ {trained_ratio:.1e}")

# %% [markdown]
# And the size of the update, $\|\Delta W\|_F = \|W\Delta A\|/\|A(x)\|$, on the same 256
# prompts, for the weights training started from and for the trained ones:

# %%
def update_sizes(model_params):
    """‖W‖_F, and the medians of ‖ΔW‖_F and ‖A(x)‖ over the test prompts (Y = C)."""
    (sized,) = implicit_update(model_params, setup.config, test.context, test.query)
    return (numpy.linalg.norm(model_params.blocks[0].mlp.W1),
            numpy.median(numpy.linalg.norm(sized.delta_W, axis=(-2, -1))),
            numpy.median(numpy.linalg.norm(sized.u_without, axis=-1)))


initial_norm_W, initial_norm_dW, initial_norm_A_x = update_sizes(
    init_params(setup.config, seed=0))
trained_norm_W, trained_norm_dW, trained_norm_A_x = update_sizes(trained.params)
print("| weights | ‖W‖_F | median ‖ΔW‖_F | median ‖A(x)‖ |\n|---|---|---|---|")
print(f"| initial | {initial_norm_W:.2f} | {initial_norm_dW:.2f} |"
      f" {initial_norm_A_x:.3f} |")
print(f"| after {setup.steps} steps | {trained_norm_W:.2f} | {trained_norm_dW:.2f} |"
      f" {trained_norm_A_x:.3f} |")

# %% [markdown]
# At the initial weights the update is already of the size of the weight (median
# $\|\Delta W\|_F = 9.53$ against $\|W\|_F = 11.55$, $\|A(x)\| = 1.13$). Training leaves
# $\|W\|_F$ about where it was but shrinks $A(x)$, the query's attention output on its own,
# and since $\|\Delta W\|_F = \|W\Delta A\|/\|A(x)\|$ the update grows: after the
# 20 000 steps $\|A(x)\| = 0.038$ and the median $\|\Delta W\|_F$ is 65.2 against
# $\|W\|_F = 10.50$, six times the weight it updates. (After the 300 steps of the short run:
# $\|A(x)\| = 0.586$, $\|\Delta W\|_F = 9.76$ against $11.54$.) "Learning without training"
# is an exact rewriting, not a small step away from $W$.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
history = trained.history
axes[0].semilogy(history.step, history.train_loss, lw=0.6, label="train (batch)")
axes[0].semilogy(history.val_step, history.val_loss, "o-", label="held-out")
axes[0].set_xlabel("step")
axes[0].set_ylabel("squared error at the query")
axes[0].set_title(f"training, {setup.steps} steps")
axes[0].legend()
axes[1].scatter(test.target, trained_with_context[:, -1, -1], s=8, label=r"$T_W(C, x)$")
axes[1].scatter(test.target, trained_patched[:, -1, -1], s=8, marker="x",
                label=r"$T_{W+\Delta W}(x)$")
axes[1].set_xlabel(r"target $\langle w, x\rangle$")
axes[1].set_ylabel("prediction")
axes[1].set_title("trained: the two predictions coincide")
axes[1].legend()
plt.show()

# %% [markdown]
# ## Summary
#
# * The context vector is $\Delta A = A(C, x) - A(x)$, read at the query from two forward
#   caches.
# * The update is $\Delta W = (W\,\Delta A)\,A(x)^\top/\|A(x)\|^2$, rank 1, and
#   $T_W(C, x) = T_{W + \Delta W}(x)$ for any weights, to $10^{-12}$ in float64.
# * Proof: $(W + \Delta W)A(x) = W A(x) + W\Delta A = W A(C, x)$.
# * It is not small: $\|\Delta W\|_F = \|W\Delta A\|/\|A(x)\|$, comparable to $\|W\|_F$ or
#   several times larger.
# * It depends on the query through its row $A(x)^\top/\|A(x)\|^2$ and its column
#   $W(A(C, x) - A(x))$: a borrowed patch fails.

# %% [markdown]
# ## Exercises
#
# 1. *(Derivation.)* Show that $\Delta W v = 0$ for every $v \perp A(x)$ and
#    $\Delta W A(x) = W\Delta A$. Deduce $\|\Delta W\|_F = \|W\Delta A\|/\|A(x)\|$, and check
#    it on `update`.
# 2. *(Prediction, then code.)* Give the block a causal mask (`replace(config, causal=True)`,
#    same weights). Predict, before running it, whether $\Delta W$ changes and whether the
#    identity still holds at the query. Then test it.
# 3. *(Derivation.)* Why does the theorem need $A(x) \neq 0$? For this block (no skips,
#    softmax attention) show $A(x) = W_O W_V x$ and find a query token with $A(x) = 0$. What
#    does `implicit_update` do for it?
# 4. *(Extension.)* Move only the first three context tokens into the weights:
#    `implicit_update(..., removed=[0, 1, 2])`, then run the patched block on
#    `minimal_icl.implicit.remove_tokens(context, query, [0, 1, 2])`, and check that its
#    output at the query equals $T_W(C, x)$ to `IDENTITY_RTOL`. (Tutorial 3 is about this.)
#
# The solutions are folded away below (click to open them).

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** $\Delta W v = (W\Delta A)\,\langle A(x), v\rangle/\|A(x)\|^2$: zero for
# $v \perp A(x)$, and $W\Delta A$ for $v = A(x)$. For a rank-1 matrix $c\,r^\top$,
# $\|c\,r^\top\|_F = \|c\|\,\|r\|$, here $\|W\Delta A\| \cdot \|A(x)\|/\|A(x)\|^2$. So the
# patch is large exactly when $A(x)$ is short compared with what the context adds, which is
# what training does to the paper's block ($\|A(x)\| \approx 0.038$ after 20 000 steps).

# %% jupyter={"source_hidden": true}
# Solution 1 (the check).
formula = norm_W_dA / norm_A_x
print(f"‖ΔW‖_F against ‖W ΔA‖/‖A(x)‖: relative residual"
      f" {relative_residual(norm_dW, formula):.1e}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 2.** Nothing changes. The query is the last token, so a causal mask lets it
# see every token: $A(C, x)$ is the same. On the query alone there is nothing to mask. In a
# one-block model the keys and values are projections of the input tokens, untouched by
# what the other positions see, so $\Delta W$ is identical and the identity holds. (In a stack the
# mask changes the other positions' outputs, hence the next block's keys and values.)

# %% jupyter={"source_hidden": true}
# Solution 2 (the test).
causal_config = replace(config, causal=True)
(causal_update,) = implicit_update(params, causal_config, context, query)
causal_with, _ = forward(params, causal_config, batch.tokens, last_only=True)
causal_patched, _ = forward(params, causal_config, query_alone, patches=(causal_update,))
causal_change = relative_residual(causal_update.delta_W, update.delta_W)
causal_residual = relative_residual(causal_patched[:, -1], causal_with[:, -1])
print(f"ΔW causal vs not: {causal_change:.1e};"
      f" identity with the mask: {causal_residual:.1e}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 3.** The patch divides by $\|A(x)\|^2$; if $A(x) = 0$, then $X A(x) = 0$ for
# every $X$ and no update can produce $W\Delta A \neq 0$. Alone, the query attends only to
# itself with weight 1, so $A(x) = W_O (W_V x)$, linear in $x$: the zero token gives
# $A(x) = 0$ (here $W_O W_V$ is a generic $3 \times 3$ matrix, so only $x = 0$ does).
# `implicit_update` raises `DegenerateQueryError` naming the prompt; it never adds an epsilon.

# %% jupyter={"source_hidden": true}
# Solution 3 (the check).
from minimal_icl.implicit import DegenerateQueryError

attn = params.blocks[0].attn
A_x_formula = query @ (attn.W_O @ attn.W_V).T  # (B, D)  W_O W_V x
print(f"A(x) against W_O W_V x: relative residual"
      f" {relative_residual(A_x_formula, cache_alone.blocks[0].u[:, -1]):.1e}")
zero_query = numpy.array(query)
zero_query[5] = 0.0
try:
    implicit_update(params, config, context, zero_query)
except DegenerateQueryError as error:
    print("DegenerateQueryError for prompts", error.prompts)

# %% jupyter={"source_hidden": true}
# Solution 4.
from minimal_icl.implicit import remove_tokens

partial = implicit_update(params, config, context, query, removed=[0, 1, 2])
shorter = remove_tokens(context, query, [0, 1, 2])  # (B, N − 3 + 1, D)
partial_out, _ = forward(params, config, shorter, patches=partial)
partial_residual = relative_residual(partial_out[:, -1], with_context[:, -1])
print(f"Y = {{c_1, c_2, c_3}}: relative residual {partial_residual:.1e}")

# %% [markdown]
# ## Checks

# %%
assert residual_random <= IDENTITY_RTOL
assert residual_unpatched > 1e-3  # the context matters
assert ratio.max() <= IDENTITY_RTOL  # rank 1
assert relative_residual(update.delta_W, outer) <= IDENTITY_RTOL
assert relative_residual(norm_dW, norm_W_dA / norm_A_x) <= IDENTITY_RTOL
assert residual_own <= IDENTITY_RTOL
assert residual_borrowed > 1e-3  # a patch is specific to its query
assert trained.history.val_loss[-1] < 0.5 * trained.history.val_loss[0]  # it did learn
assert trained_mse < 0.5 * baselines["zero"]  # and beats predicting 0 on fresh prompts
assert residual_trained <= IDENTITY_RTOL
assert trained_ratio <= IDENTITY_RTOL
assert trained_norm_dW > 0.5 * trained_norm_W  # the update is not small
assert initial_norm_dW > 0.5 * initial_norm_W  # nor before training
assert causal_change <= IDENTITY_RTOL and causal_residual <= IDENTITY_RTOL
assert partial_residual <= IDENTITY_RTOL
