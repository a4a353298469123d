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
# # 2. Context as a weight update
#
# The central result of Dherin et al. (2025, arXiv:2507.16003), **Theorem 2.2 in v1**: a
# self-attention layer followed by an MLP turns its context into an exact **rank-1 update**
# of the MLP's first weight matrix.
#
# **Setting.** A *contextual block* $T_W = M_W \circ A$: a contextual layer $A$ (here
# self-attention) maps a query token $x$, optionally with a context $C = [c_1, \dots, c_n]$,
# to a vector $A(C, x)$ at the query position; then $M_W(z) = f(Wz + b)$, where $W$ is the
# first dense layer of the MLP and $f$ is everything after it. Outputs are read at the query.
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
# **What we will check** (in float64, relative residual $\le$ `IDENTITY_RTOL` $= 10^{-12}$)
#
# 1. the corollary on a random block, prompt by prompt, with `implicit_update`;
# 2. that $\Delta W$ has rank 1 (one non-zero singular value);
# 3. that it depends on the query: the patch computed for one query is wrong for another;
# 4. the same identity on a block trained (briefly) on in-context regression.

# %%
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
from minimal_icl.experiments.common import cos_frobenius
from minimal_icl.implicit import implicit_update
from minimal_icl.train import paper_setting, train_setup

FAST = os.environ.get("MINIMAL_ICL_FAST") == "1"  # the test suite's short run

# %% [markdown]
# ## The paper's block, with random weights
#
# One block, softmax attention, ReLU MLP, no skip connections, no LayerNorm — the model of the
# paper's experiments. Prompts are in-context linear regression in $d = 2$: tokens
# $(x_i; y_i) \in \mathbb{R}^3$ with $y_i = \langle w, x_i\rangle$, then the query $(x; 0)$.
# `implicit_update` returns one `ImplicitUpdate` per block, usable directly as the `patches`
# argument of `forward`.

# %%
config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                           attention="softmax", activation="relu")
params = init_params(config, seed=0)
batch = regression_prompts(64, n_context=20, d=2, seed=1)
context, query = batch.context, batch.query  # (B, N, D), (B, D)

with_context, _ = forward(params, config, batch.tokens, last_only=True)  # T_W(C, x)
(update,) = implicit_update(params, config, context, query)
query_alone = query[:, None, :]  # (B, 1, D): the prompt without its context
patched, _ = forward(params, config, query_alone, patches=(update,))  # T_{W+ΔW}(x)
unpatched, _ = forward(params, config, query_alone)  # T_W(x)

residual_random = relative_residual(patched[:, -1], with_context[:, -1])
print("ΔW:", update.delta_W.shape, "(B, M, D)")
print(f"relative residual, T_W(C,x) vs T_(W+ΔW)(x): {residual_random:.1e}")
print(f"and without the patch, T_W(x) is off by:    {relative_residual(unpatched[:, -1], with_context[:, -1]):.1e}")

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
    axes[1].semilogy(numpy.maximum(singular_values[:, k], 1e-300), "o", ms=3, label=f"σ{k + 1}")
axes[1].set_xlabel("prompt")
axes[1].set_ylabel("singular value")
axes[1].set_title(r"singular values of $\Delta W$")
axes[1].legend()
plt.show()

# %% [markdown]
# ## The update depends on the query
#
# The row factor is the query's own attention output $A(x)$: the same context gives a
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

fig, ax = plt.subplots(figsize=(4.5, 3.2), constrained_layout=True)
ax.hist(alignment, bins=20, range=(-1, 1), color="tab:purple")
ax.set_xlabel(r"$\cos_F(\Delta W(x), \Delta W(x'))$, same context")
ax.set_ylabel("prompts")
plt.show()

# %% [markdown]
# ## A trained block
#
# The theorem does not care whether the weights were trained. Train the paper's block
# (`paper_setting()`: $N = 50$ pairs, two heads, Adam) for a short while on in-context
# regression and check the identity again, on fresh prompts.

# %%
setup = replace(paper_setting(fast=True), steps=300 if FAST else 1500)
trained = train_setup(setup, seed=0)
print(f"{setup.steps} Adam steps; held-out MSE {trained.history.val_loss[0]:.2f} -> "
      f"{trained.history.val_loss[-1]:.2f}  (predicting 0 scores {baseline_mse(batch)['zero']:.2f})")

test = regression_prompts(256, n_context=setup.n_context, d=setup.d, seed=3)
trained_with_context, _ = forward(trained.params, setup.config, test.tokens, last_only=True)
(trained_update,) = implicit_update(trained.params, setup.config, test.context, test.query)
trained_patched, _ = forward(trained.params, setup.config, test.query[:, None, :],
                             patches=(trained_update,))
residual_trained = relative_residual(trained_patched[:, -1], trained_with_context[:, -1])
trained_ratio = numpy.linalg.svd(trained_update.delta_W, compute_uv=False)
trained_ratio = numpy.max(trained_ratio[:, 1] / trained_ratio[:, 0])
print(f"trained block: relative residual {residual_trained:.1e}, largest σ₂/σ₁ {trained_ratio:.1e}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
axes[0].semilogy(trained.history.step, trained.history.train_loss, lw=0.6, label="train (batch)")
axes[0].semilogy(trained.history.val_step, trained.history.val_loss, "o-", label="held-out")
axes[0].set_xlabel("step")
axes[0].set_ylabel("squared error at the query")
axes[0].set_title("a short training run")
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
# ## Exercises
#
# 1. Use `removed=[0, 1, 2]` in `implicit_update` and run the patched block on
#    `minimal_icl.implicit.remove_tokens(context, query, [0, 1, 2])`. (Tutorial 3 is about this.)
# 2. Why does the theorem need $A(x) \neq 0$? Find a query token for which this block has
#    $A(x) = 0$. (Hint: softmax attention without context gives $A(x) = W_O W_V x$.)

# %% [markdown]
# ## Checks

# %%
assert residual_random <= IDENTITY_RTOL
assert relative_residual(unpatched[:, -1], with_context[:, -1]) > 1e-3  # the context matters
assert ratio.max() <= IDENTITY_RTOL  # rank 1
assert relative_residual(update.delta_W, outer) <= IDENTITY_RTOL
assert residual_own <= IDENTITY_RTOL
assert residual_borrowed > 1e-3  # a patch is specific to its query
assert trained.history.val_loss[-1] < 0.5 * trained.history.val_loss[0]  # it did learn
assert residual_trained <= IDENTITY_RTOL
assert trained_ratio <= IDENTITY_RTOL
