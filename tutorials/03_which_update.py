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
# # 3. Which update? Partial contexts, non-uniqueness, the degenerate case
#
# Tutorial 2 replaced the *whole* context by a rank-1 patch. Theorem 2.2 (Dherin et al. 2025,
# arXiv:2507.16003, Theorem 2.2 in v1) says more: any part $Y \subseteq C$ of the context can be
# moved into the weights while the rest stays in the prompt,
#
# $$
# T_W(C, x) = T_{W + \Delta W(Y)}(C \setminus Y, x),\qquad
# \Delta W(Y) = \frac{(W\,\delta A_x(Y))\, A(C\setminus Y, x)^\top}{\|A(C\setminus Y, x)\|^2}.
# $$
#
# Three questions follow.
#
# * **Is it the only update?** No. Any $X$ with $X a = W\delta$, $a = A(C\setminus Y, x)$, does
#   the same job, e.g. $\Delta W + M_\perp$ with $M_\perp a = 0$. Among them $\Delta W(Y)$ is the
#   one of **minimum Frobenius norm**: it is $W\delta\, a^+$ with the pseudo-inverse
#   $a^+ = a^\top/\|a\|^2$, and its rows are multiples of $a^\top$ while those of $M_\perp$ are
#   orthogonal to $a$, so $\|\Delta W + M_\perp\|_F^2 = \|\Delta W\|_F^2 + \|M_\perp\|_F^2$.
# * **What if $a = A(C\setminus Y, x) = 0$?** Then $Xa = 0 \neq W\delta$ for every $X$: no update
#   exists in general. The package raises `DegenerateQueryError`; it never adds an epsilon.
# * **Does the order of the kept tokens matter?** $C\setminus Y$ keeps the remaining tokens in
#   their order (the model here has no positions, so it would not matter anyway).
#
# **What we will check**: the identity for random subsets $Y$ of every size
# (relative residual $\le$ `IDENTITY_RTOL`); the minimum-norm property against an independent
# pseudo-inverse (`numpy.linalg.pinv` via `minimum_norm_solution`) and against a family of
# other solutions; and the error in the degenerate case.

# %%
import matplotlib.pyplot as plt
import numpy

from minimal_icl import (
    IDENTITY_RTOL,
    BlockPatch,
    TransformerConfig,
    forward,
    init_params,
    relative_residual,
)
from minimal_icl.data import regression_prompts
from minimal_icl.implicit import (
    DegenerateQueryError,
    implicit_update,
    minimum_norm_solution,
    null_space_perturbation,
    remove_tokens,
)

config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                           attention="softmax", activation="relu")
params = init_params(config, seed=0)
N = 12
batch = regression_prompts(32, n_context=N, d=2, seed=1)
context, query = batch.context, batch.query
with_context, _ = forward(params, config, batch.tokens, last_only=True)

# %% [markdown]
# ## Partial contexts $Y \subset C$
#
# For each size $|Y| = 0, \dots, N$ draw a few random subsets, patch, and run the block on
# the shorter prompt `remove_tokens(context, query, Y)` ($C \setminus Y$ in order, then the
# query).

# %%
rng = numpy.random.default_rng(0)
sizes, residuals, patch_norms = [], [], []
for size in range(N + 1):
    for _ in range(3):
        Y = sorted(rng.choice(N, size=size, replace=False).tolist())
        updates = implicit_update(params, config, context, query, removed=Y)
        shorter = remove_tokens(context, query, removed=Y)  # (B, N − |Y| + 1, D)
        patched, _ = forward(params, config, shorter, patches=updates)
        sizes.append(size)
        residuals.append(relative_residual(patched[:, -1], with_context[:, -1]))
        patch_norms.append(numpy.mean(numpy.linalg.norm(updates[0].delta_W, axis=(-2, -1))))
print(f"largest relative residual over {len(residuals)} subsets: {max(residuals):.1e}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
axes[0].semilogy(sizes, numpy.maximum(residuals, 1e-18), "o", ms=4)
axes[0].axhline(IDENTITY_RTOL, color="tab:red", ls="--", label="IDENTITY_RTOL")
axes[0].set_xlabel("|Y| tokens moved into the weights")
axes[0].set_ylabel("relative residual")
axes[0].set_title(r"$T_W(C,x)$ vs $T_{W+\Delta W(Y)}(C\setminus Y, x)$")
axes[0].legend()
axes[1].plot(sizes, patch_norms, "o", ms=4, color="tab:green")
axes[1].set_xlabel("|Y|")
axes[1].set_ylabel(r"mean $\|\Delta W(Y)\|_F$")
axes[1].set_title("bigger removals need bigger patches")
plt.show()

# %% [markdown]
# ## Not unique: a family of updates, one of minimum norm
#
# `null_space_perturbation(update, M)` returns $\Delta W + M_\perp$ with
# $M_\perp = M(I - a a^\top/\|a\|^2)$. Every member of the family $\Delta W + t M_\perp$ gives the
# same output at the query, and its norm grows like $\sqrt{\|\Delta W\|_F^2 + t^2\|M_\perp\|_F^2}$.

# %%
(update,) = implicit_update(params, config, context, query)  # Y = C
query_alone = query[:, None, :]
M = rng.standard_normal((config.d_mlp, config.d_token))
scales = numpy.linspace(-2, 2, 21)
family_residuals, family_norms = [], []
for t in scales:
    other_solution = null_space_perturbation(update, t * M)  # (B, M, D)
    out, _ = forward(params, config, query_alone,
                     patches=(BlockPatch(delta_W=other_solution, delta_b=update.delta_b),))
    family_residuals.append(relative_residual(out[:, -1], with_context[:, -1]))
    family_norms.append(numpy.linalg.norm(other_solution[0]))

M_perp = null_space_perturbation(update, M) - update.delta_W
pythagoras = numpy.sqrt(numpy.linalg.norm(update.delta_W[0]) ** 2
                        + scales ** 2 * numpy.linalg.norm(M_perp[0]) ** 2)
pinv_solution = minimum_norm_solution(update.column, update.u_without)  # via linalg.pinv
print(f"largest residual over the family: {max(family_residuals):.1e}")
print(f"ΔW vs the pseudo-inverse solution: relative residual "
      f"{relative_residual(update.delta_W, pinv_solution):.1e}")

fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
ax.plot(scales, family_norms, "o", ms=4, label=r"$\|\Delta W + t M_\perp\|_F$ (prompt 0)")
ax.plot(scales, pythagoras, "-", lw=1, color="gray", label="Pythagoras")
ax.set_xlabel("t")
ax.set_ylabel("Frobenius norm")
ax.set_title("every member works; t = 0 is the smallest")
ax.legend()
plt.show()

# %% [markdown]
# ## The degenerate case
#
# Without skip connections, softmax attention on the query alone is $A(x) = W_O W_V x$ (the
# query attends only to itself). A zero query token therefore gives $A(x) = 0$, and the
# corollary has no update to offer. Make the query of prompts 3 and 7 zero:

# %%
bad_query = numpy.array(query)
bad_query[[3, 7]] = 0.0
try:
    implicit_update(params, config, context, bad_query)
    raised = None
except DegenerateQueryError as error:
    raised = error
    print(error)
    print("prompts:", error.prompts, " block:", error.block)

# %% [markdown]
# The hypothesis is about $A(C\setminus Y, x)$, not about $x$: keep one context token in the
# prompt and the same zero queries have a non-zero $A(C\setminus Y, x)$ again, so a partial
# update exists and is exact.

# %%
keep_first = list(range(1, N))  # Y = every token but c_1
partial = implicit_update(params, config, context, bad_query, removed=keep_first)
bad_tokens = numpy.concatenate([context, bad_query[:, None, :]], axis=1)
bad_with_context, _ = forward(params, config, bad_tokens, last_only=True)
patched, _ = forward(params, config, remove_tokens(context, bad_query, keep_first), patches=partial)
residual_partial = relative_residual(patched[:, -1], bad_with_context[:, -1])
print(f"Y = C minus c_1, zero queries included: relative residual {residual_partial:.1e}")

# %% [markdown]
# ## Exercise
#
# Show numerically that for a zero query no matrix $X$ at all reproduces the with-context
# output: compare `forward` on the query alone with *any* patch (the MLP input is
# $(W + X)\cdot 0 = 0$ whatever $X$ is) against the with-context output of prompt 3.
#
# The solution is folded away below (click to open it).

# %% jupyter={"source_hidden": true}
# Solution: the MLP input at the query alone is A(x) = 0, so (W + X) A(x) = 0 for every X and
# the output is the same constant for all patches — and it is not the with-context output.
outputs = []
for seed in range(3):
    X = numpy.random.default_rng(seed).standard_normal((len(bad_query), config.d_mlp, config.d_token))
    out, _ = forward(params, config, bad_query[:, None, :],
                     patches=(BlockPatch(delta_W=X, delta_b=numpy.zeros_like(bad_query)),))
    outputs.append(out[3, -1])
print("query alone, three random patches:", numpy.array(outputs))
print("with context:                     ", bad_with_context[3, -1])

# %% [markdown]
# ## Checks

# %%
assert max(residuals) <= IDENTITY_RTOL
assert max(family_residuals) <= IDENTITY_RTOL
assert relative_residual(numpy.array(family_norms), pythagoras) <= IDENTITY_RTOL
assert numpy.argmin(family_norms) == numpy.argmin(numpy.abs(scales))  # t = 0 is the minimum
assert relative_residual(update.delta_W, pinv_solution) <= IDENTITY_RTOL
assert isinstance(raised, DegenerateQueryError) and raised.prompts == (3, 7) and raised.block == 0
assert residual_partial <= IDENTITY_RTOL
