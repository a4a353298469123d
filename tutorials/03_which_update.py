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
# Symbols follow the [notation](../docs/notation.md) table; here $a = A(C\setminus Y, x)$ and
# $\delta = \delta A_x(Y)$. Three questions follow.
#
# * **Is it the only update?** No. Any $X$ with $X a = W\delta$ does the same job, e.g.
#   $\Delta W + Z$ with $Z a = 0$ (a *null-space* matrix $Z$). Among them $\Delta W(Y)$ is the
#   one of **minimum Frobenius norm**: it is $W\delta\, a^+$ with the pseudo-inverse
#   $a^+ = a^\top/\|a\|^2$, and its rows are multiples of $a^\top$ while those of $Z$ are
#   orthogonal to $a$, so $\|\Delta W + Z\|_F^2 = \|\Delta W\|_F^2 + \|Z\|_F^2$.
# * **What if $a = A(C\setminus Y, x) = 0$?** Then $Xa = 0 \neq W\delta$ for every $X$: no update
#   exists in general. The package raises `DegenerateQueryError`; it never adds an epsilon.
# * **Does the order of the kept tokens matter?** $C\setminus Y$ keeps the remaining tokens in
#   their order (the model here has no positions and no causal mask, so it would not matter
#   anyway).
#
# **What we will do**: check the identity for random subsets $Y$ of every size (relative
# residual $\le$ `IDENTITY_RTOL`); **write the projection that makes any matrix a null-space
# matrix $Z$** and check it by the patched forward; check the minimum-norm property against
# an independent pseudo-inverse (`numpy.linalg.pinv` via `minimum_norm_solution`) and a
# family of other solutions; and meet the error of the degenerate case.

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
from minimal_icl.exercises.tutorial_03 import check_null_space
from minimal_icl.implicit import (
    DegenerateQueryError,
    implicit_update,
    minimum_norm_solution,
    null_space_perturbation,
    remove_tokens,
)

# %% [markdown]
# The block of tutorial 2 (one softmax head of width $K = 8$, ReLU MLP of width $M = 32$, no
# skips, no LayerNorm), on $N = 12$ context pairs:

# %%
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
# query): $T_{W+\Delta W(Y)}(C\setminus Y, x)$ against $T_W(C, x)$.

# %%
rng = numpy.random.default_rng(0)
sizes, residuals, patch_norms = [], [], []
a_norms = []  # ‖a‖ of every prompt and subset
largest = (0.0, 0.0, 0, 0.0, 0.0)  # the largest ‖ΔW‖: its ‖a‖, |Y|, its subset's mean, median
for size in range(N + 1):
    for _ in range(3):
        Y = sorted(rng.choice(N, size=size, replace=False).tolist())
        updates = implicit_update(params, config, context, query, removed=Y)
        shorter = remove_tokens(context, query, removed=Y)  # (B, N − |Y| + 1, D)
        patched, _ = forward(params, config, shorter, patches=updates)
        sizes.append(size)
        residuals.append(relative_residual(patched[:, -1], with_context[:, -1]))
        norms = numpy.linalg.norm(updates[0].delta_W, axis=(-2, -1))  # (B,)
        patch_norms.append(numpy.median(norms))
        a = numpy.linalg.norm(updates[0].u_without, axis=-1)  # (B,) ‖a‖, a = A(C∖Y, x)
        a_norms.extend(a)
        if norms.max() > largest[0]:
            largest = (norms.max(), a[numpy.argmax(norms)], size, norms.mean(),
                       numpy.median(norms))
print(f"largest relative residual over {len(residuals)} subsets: {max(residuals):.1e}")
print(f"largest patch: ‖ΔW‖_F = {largest[0]:.1f} at |Y| = {largest[2]}, where ‖a‖ ="
      f" {largest[1]:.3f} (median ‖a‖ over all prompts and subsets {numpy.median(a_norms):.2f})")
print(f"that subset's ‖ΔW‖_F over the {len(query)} prompts: mean {largest[3]:.2f},"
      f" median {largest[4]:.2f}")

# %% [markdown]
# Left: the identity holds for every subset. Right: the size of the patch, the median over the
# 32 prompts of $\|\Delta W(Y)\|_F = \|W\delta\|/\|a\|$ (tutorial 2). It grows with $|Y|$ on
# average (not at every step: each point is one random subset):
# the more tokens leave the prompt, the more $A(C\setminus Y, x)$ moves away from $A(C, x)$. A
# mean would blur this: the odd prompt whose $a = A(C\setminus Y, x)$ happens to be short
# has a huge patch and dominates it (the largest, printed above: $\|a\| = 0.04$ against a
# median of 0.76, and a patch of norm 82, which alone adds $82/32 \approx 2.6$ to the mean over
# the 32 prompts: that subset's mean is 5.4, its median 0.78).

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
axes[0].semilogy(sizes, numpy.maximum(residuals, 1e-18), "o", ms=4)
axes[0].axhline(IDENTITY_RTOL, color="tab:red", ls="--", label="IDENTITY_RTOL")
axes[0].set_xlabel("|Y| tokens moved into the weights")
axes[0].set_ylabel("relative residual")
axes[0].set_title(r"$T_W(C,x)$ vs $T_{W+\Delta W(Y)}(C\setminus Y, x)$")
axes[0].legend()
axes[1].plot(sizes, patch_norms, "o", ms=4, color="tab:green")
axes[1].set_xlabel("|Y|")
axes[1].set_ylabel(r"median $\|\Delta W(Y)\|_F$ over prompts")
axes[1].set_title("bigger removals need bigger patches")
plt.show()

# %% [markdown]
# ## Your turn: a null-space matrix from any matrix
#
# Another exact update is $\Delta W + Z$ for any $Z$ with $Z a = 0$, because then
# $(W + \Delta W + Z)\,a = W a + W\delta = W A(C, x)$. Any matrix becomes one by removing
# the part of its rows along $a$: with the orthogonal projector $I - a a^\top/\|a\|^2$,
#
# $$
# Z_\perp = Z\Big(I - \frac{a\,a^\top}{\|a\|^2}\Big) = Z - \frac{(Z a)\, a^\top}{\|a\|^2},
# \qquad Z_\perp a = Z a - Z a = 0 .
# $$
#
# Write it for every prompt at once and store it in `Z_perp`: `Z` has shape `(B, M, D)` and
# `a` shape `(B, D)`; `Z @ a[:, :, None]` is $Za$, shape `(B, M, 1)`, `a[:, None, :]` is
# $a^\top$ per prompt, and each prompt divides by its own $\|a\|^2$ (shape `(B, 1, 1)` to
# broadcast against `(B, M, D)`).

# %%
def null_space_part(Z, a):
    """Z_⊥ = Z (I − a aᵀ/‖a‖²) per prompt: Z (B, M, D), a (B, D) -> (B, M, D)."""
    ### BEGIN SOLUTION
    Za = Z @ a[:, :, None]  # (B, M, 1)
    Z_perp = Z - Za * a[:, None, :] / numpy.sum(a * a, axis=-1)[:, None, None]
    ### END SOLUTION
    return Z_perp


# %% [markdown]
# The check draws fresh prompts and a random $Z$, compares your $Z_\perp$ with the package's
# `null_space_perturbation`, checks $Z_\perp a = 0$, and runs the query alone through
# $W + \Delta W + Z_\perp$, which must give the with-context output.

# %%
check_null_space(null_space_part, params, config);

# %% [markdown]
# ## Not unique: a family of updates, one of minimum norm
#
# `null_space_perturbation(update, Z)` returns $\Delta W + Z_\perp$ (the line you just wrote,
# added to $\Delta W$). Every member of the family $\Delta W + \lambda Z_\perp$
# ($\lambda \in \mathbb{R}$) gives the same output at the query, and by Pythagoras its norm is
# $\sqrt{\|\Delta W\|_F^2 + \lambda^2\|Z_\perp\|_F^2}$, smallest at $\lambda = 0$.

# %%
(update,) = implicit_update(params, config, context, query)  # Y = C
query_alone = query[:, None, :]
Z = rng.standard_normal((config.d_mlp, config.d_token))  # one Z for every prompt
scales = numpy.linspace(-2, 2, 21)
family_residuals, family_norms = [], []
for lam in scales:
    other_solution = null_space_perturbation(update, lam * Z)  # (B, M, D)  ΔW + λ Z_⊥
    patch = BlockPatch(delta_W=other_solution, delta_b=update.delta_b)
    out, _ = forward(params, config, query_alone, patches=(patch,))
    family_residuals.append(relative_residual(out[:, -1], with_context[:, -1]))
    family_norms.append(numpy.linalg.norm(other_solution[0]))
print(f"largest residual over the family: {max(family_residuals):.1e}")

# %% [markdown]
# The minimum-norm solution of $X a = W\delta$ is $X = W\delta\, a^+$; `minimum_norm_solution`
# computes $a^+$ with `linalg.pinv` (an SVD), independently of the formula $a^\top/\|a\|^2$.

# %%
Z_perp = null_space_perturbation(update, Z) - update.delta_W  # (B, M, D)
pythagoras = numpy.sqrt(numpy.linalg.norm(update.delta_W[0]) ** 2
                        + scales ** 2 * numpy.linalg.norm(Z_perp[0]) ** 2)
pinv_solution = minimum_norm_solution(update.column, update.u_without)  # via linalg.pinv
pinv_residual = relative_residual(update.delta_W, pinv_solution)
a = update.u_without  # (B, D)
annihilation = numpy.max(numpy.abs(Z_perp @ a[:, :, None])) / (
    numpy.max(numpy.abs(Z)) * numpy.max(numpy.linalg.norm(a, axis=-1)))
print(f"Z_⊥ a, relative to max|Z| ‖a‖: {annihilation:.1e}")
print(f"ΔW vs the pseudo-inverse solution: relative residual {pinv_residual:.1e}")

fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
ax.plot(scales, family_norms, "o", ms=4, label=r"$\|\Delta W + \lambda Z_\perp\|_F$ (prompt 0)")
ax.plot(scales, pythagoras, "-", lw=1, color="gray", label="Pythagoras")
ax.set_xlabel(r"$\lambda$")
ax.set_ylabel("Frobenius norm")
ax.set_title(r"every member works; $\lambda = 0$ is the smallest")
ax.legend()
plt.show()

# %% [markdown]
# ## The degenerate case
#
# Without LayerNorm, softmax attention on the query alone is $A(x) = W_O W_V x$ (the query
# attends only to itself), and the MLP reads $A(x)$, or $x + A(x)$ with the attention skip.
# A zero query token therefore gives a zero MLP input either way, and Theorem 2.2 with
# $Y = C$ has no update to offer. (With LayerNorm a zero token leaves LN1 as its bias,
# $\mathrm{LN}_1(0) = \beta_1$, so $h_\emptyset = W_O W_V \beta_1$ (plus $x = 0$ with the skip)
# and the MLP reads $u_\emptyset = \mathrm{LN}_2(h_\emptyset)$; when $\beta_1 = 0$ that is
# $\mathrm{LN}_2(0) = \beta_2$, and at the package's initialisation, where every LayerNorm
# bias is 0, it is zero too.) Make the query of prompts 3 and 7 zero:

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
# Of the remedies the message lists, the attention skip does not help a zero query: it adds
# $x$ itself, zero here (it helps a non-zero $x$ whose $A(x)$ is zero). A LayerNorm bias
# ($\beta_2 \neq 0$ is enough) or more tokens in the prompt do.
#
# The hypothesis is about $A(C\setminus Y, x)$, not about $x$: keep one context token in the
# prompt and the same zero queries have a non-zero $A(C\setminus Y, x)$ again, so a partial
# update exists and is exact.

# %%
keep_first = list(range(1, N))  # Y = every token but c_1
partial = implicit_update(params, config, context, bad_query, removed=keep_first)
bad_tokens = numpy.concatenate([context, bad_query[:, None, :]], axis=1)
bad_with_context, _ = forward(params, config, bad_tokens, last_only=True)
shorter = remove_tokens(context, bad_query, keep_first)  # (B, 2, D): c_1, then x
patched, _ = forward(params, config, shorter, patches=partial)
residual_partial = relative_residual(patched[:, -1], bad_with_context[:, -1])
print(f"Y = C minus c_1, zero queries included: relative residual {residual_partial:.1e}")

# %% [markdown]
# ## Summary
#
# * Any part of the context can go into the weights:
#   $T_W(C, x) = T_{W + \Delta W(Y)}(C\setminus Y, x)$, $\Delta W(Y) = W\delta\,a^\top/\|a\|^2$.
# * Every $X$ with $X a = W\delta$ works; they are $\Delta W(Y) + Z$ with $Z a = 0$, and
#   $Z_\perp = Z(I - a a^\top/\|a\|^2)$ makes one from any $Z$.
# * $\Delta W(Y) = W\delta\, a^+$ is the minimum-norm one:
#   $\|\Delta W + Z\|_F^2 = \|\Delta W\|_F^2 + \|Z\|_F^2$.
# * If $a = 0$ no $X$ exists ($X \cdot 0 = 0$): `DegenerateQueryError`, no epsilon.

# %% [markdown]
# ## Exercises
#
# 1. *(Derivation.)* Show that among all $X \in \mathbb{R}^{M \times D}$ with $X a = W\delta$,
#    the one of minimum Frobenius norm is $X = W\delta\, a^\top/\|a\|^2 = W\delta\, a^+$.
#    (Hint: treat each row $\xi_m^\top$ of $X$ separately: it must satisfy
#    $\xi_m^\top a = (W\delta)_m$.)
# 2. *(Derivation, then a test.)* Show that $\Delta W + Z$ gives the MLP the same
#    pre-activation $(W + \Delta W + Z)a = W A(C, x)$ if and only if $Z a = 0$. Is "the
#    *output* is exact" also equivalent to $Z a = 0$ for this ReLU block? Predict, then build
#    a $Z$ with $Z a \neq 0$ that keeps the output exact.
# 3. *(Derivation, then a prediction to test.)* Suppose every token's key is the same vector
#    (set `W_K = 0`: all scores are equal). Let $A_i = A(c_1, \dots, c_i, x)$ be the query's
#    attention output on the prompt $[c_1, \dots, c_i, x]$ ($A_0 = A(x)$). Show that the query
#    gives each of these $i + 1$ tokens (itself included) the weight $1/(i+1)$, and that
#    $A_{i+1} - A_i = (W_O v_{i+1} - A_i)/(i+2)$ with $v_{i+1} = W_V c_{i+1}$. The patch that
#    replaces $c_1..c_i$ is tutorial 2's, $\Delta W_i = W (A_i - A_0) A_0^\top/\|A_0\|^2$:
#    what does this predict for the size of the increment $\|\Delta W_{i+1} - \Delta W_i\|_F$
#    as $i$ grows? Test the weights and the difference formula.
# 4. *(Prediction.)* For a zero query, show that no matrix $X$ at all reproduces the
#    with-context output of prompt 3 from the query alone: compare `forward` on the query
#    alone with a few random patches against the with-context output.
#
# The solutions are folded away below (click to open them).

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** The constraint $X a = W\delta$ is one equation per row:
# $\xi_m^\top a = (W\delta)_m$, and $\|X\|_F^2 = \sum_m \|\xi_m\|^2$, so each row is minimised
# on its own. Split $\xi_m = \alpha_m a/\|a\| + \xi_m^\perp$ with $\xi_m^\perp \perp a$: the
# constraint fixes $\alpha_m \|a\| = (W\delta)_m$ and says nothing about $\xi_m^\perp$, and
# $\|\xi_m\|^2 = \alpha_m^2 + \|\xi_m^\perp\|^2$ is smallest for $\xi_m^\perp = 0$. Hence
# $\xi_m = (W\delta)_m\, a/\|a\|^2$, i.e. $X = W\delta\,a^\top/\|a\|^2$. For a non-zero column
# vector $a$ the pseudo-inverse is $a^+ = a^\top/\|a\|^2$ (check $a^+ a = 1$), so this is the
# pseudo-inverse solution $W\delta\,a^+$, which `minimum_norm_solution` confirms above.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 2.** $(W + \Delta W + Z)a = W A(C, x) + Z a$, equal to $W A(C, x)$ iff
# $Za = 0$. For the output the "if" holds but not the "only if": the ReLU forgets how
# negative a pre-activation is. Take a hidden unit $m$ that is off at the query
# ($[W A(C,x) + b]_m < 0$) and $Z = -e_m a^\top/\|a\|^2$: then $Za = -e_m \neq 0$ pushes
# unit $m$ further below zero, and the output does not move. A second route uses $W'$ (the
# MLP's second weight, $D \times M$, so with a large null space): a small $Za$ that keeps
# every unit on its side of zero and lies in the null space of $W'$ restricted to the
# active units changes the hidden vector, but not the output.

# %% jupyter={"source_hidden": true}
# Solution 2 (the test), for prompt 0 of the batch.
A_C = update.u_without + update.delta_u  # (B, D)  A(C, x)
pre_activation = A_C @ params.blocks[0].mlp.W1.T + params.blocks[0].mlp.b1  # (B, M)
m = int(numpy.argmin(pre_activation[0]))  # a unit that is off for prompt 0
Z_dead = numpy.zeros_like(update.delta_W)
Z_dead[0, m] = -update.row[0]  # Z = −e_m aᵀ/‖a‖² for prompt 0 only
dead_out, _ = forward(params, config, query_alone,
                      patches=(BlockPatch(update.delta_W + Z_dead, update.delta_b),))
Za_norm = numpy.linalg.norm(Z_dead[0] @ update.u_without[0])
dead_residual = relative_residual(dead_out[:, -1], with_context[:, -1])
print(f"unit {m}: pre-activation {pre_activation[0, m]:.2f}; ‖Z a‖ = {Za_norm:.1f};"
      f" output residual {dead_residual:.1e}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 3.** Equal keys give equal scores $S_j = \langle q, k\rangle/\sqrt{K}$, and the
# softmax of $i + 1$ equal numbers is $e^{S}/((i+1)e^{S}) = 1/(i+1)$. So
# $A_i = W_O \frac{1}{i+1}\sum_{j} v_j$ over the query and $c_1..c_i$, an average, and
# $A_{i+1} = \frac{(i+1)A_i + W_O v_{i+1}}{i+2}$ gives $A_{i+1} - A_i = (W_O v_{i+1} - A_i)/(i+2)$.
# Both patches have the row $A_0^\top/\|A_0\|^2$, so
# $\|\Delta W_{i+1} - \Delta W_i\|_F = \|W (A_{i+1} - A_i)\|/\|A_0\|
# = \|W (W_O v_{i+1} - A_i)\|/((i+2)\|A_0\|)$: it decays like $1/i$ — for **any** values,
# trained or not (tutorial 5 calls this the increment of the path). With unequal keys and
# context tokens drawn alike, the $i$ context tokens are exchangeable, so each gets on average
# $(1 - P_x)/i$ ($P_x$ the query's own weight): still of order $1/i$.

# %% jupyter={"source_hidden": true}
# Solution 3 (the test): the query's weights for every prefix c_1..c_i with W_K = 0.
attn = params.blocks[0].attn
flat_attn = attn._replace(W_K=numpy.zeros_like(attn.W_K))  # every key is 0
flat_keys = params._replace(blocks=(params.blocks[0]._replace(attn=flat_attn),))
weight_gaps, A_prefix = [], []
for i in range(N + 1):
    prefix = numpy.concatenate([context[:, :i], query_alone], axis=1)  # (B, i + 1, D)
    _, prefix_cache = forward(flat_keys, config, prefix, last_only=True)
    P = prefix_cache.blocks[0].attn.weights[:, :, -1]  # (B, H, i + 1)
    weight_gaps.append(float(numpy.max(numpy.abs(P - 1.0 / (i + 1)))))
    A_prefix.append(prefix_cache.blocks[0].u[:, -1])  # (B, D)  A_i (u = A here)
print(f"largest |P − 1/(i+1)| over i = 0..{N}: {max(weight_gaps):.1e}")

# %% jupyter={"source_hidden": true}
# Solution 3 (the test, continued): A_{i+1} − A_i = (W_O v_{i+1} − A_i)/(i + 2).
WO_v = context @ (flat_attn.W_O @ flat_attn.W_V).T  # (B, N, D)  W_O v_j for every c_j
difference_gaps = [
    relative_residual(A_prefix[i + 1] - A_prefix[i], (WO_v[:, i] - A_prefix[i]) / (i + 2))
    for i in range(N)
]
print(f"A_(i+1) − A_i against (W_O v_(i+1) − A_i)/(i + 2): largest relative residual"
      f" {max(difference_gaps):.1e}")

# %% jupyter={"source_hidden": true}
# Solution 4. The MLP input at the query alone is A(x) = 0, so (W + X) A(x) = 0 for every X
# and the output is the same for all patches — and it is not the with-context output.
outputs = []
for seed in range(3):
    X = numpy.random.default_rng(seed).standard_normal(
        (len(bad_query), config.d_mlp, config.d_token))
    patch = BlockPatch(delta_W=X, delta_b=numpy.zeros_like(bad_query))
    out, _ = forward(params, config, bad_query[:, None, :], patches=(patch,))
    outputs.append(out[3, -1])
print("query alone, three random patches:", numpy.array(outputs))
print("with context:                     ", bad_with_context[3, -1])

# %% [markdown]
# ## Checks

# %%
assert max(residuals) <= IDENTITY_RTOL
assert largest[2] == 3 and round(largest[0]) == 82 and round(largest[3], 1) == 5.4
assert max(family_residuals) <= IDENTITY_RTOL
assert relative_residual(numpy.array(family_norms), pythagoras) <= IDENTITY_RTOL
assert numpy.argmin(family_norms) == numpy.argmin(numpy.abs(scales))  # λ = 0: the minimum
assert annihilation <= IDENTITY_RTOL  # Z_⊥ a = 0
assert pinv_residual <= IDENTITY_RTOL
assert isinstance(raised, DegenerateQueryError)
assert raised.prompts == (3, 7) and raised.block == 0
assert residual_partial <= IDENTITY_RTOL
assert Za_norm > 0.5 and dead_residual <= IDENTITY_RTOL  # Z a ≠ 0, output still exact
assert max(weight_gaps) <= IDENTITY_RTOL
assert max(difference_gaps) <= IDENTITY_RTOL
assert numpy.ptp(numpy.array(outputs), axis=0).max() <= IDENTITY_RTOL  # same for every X
