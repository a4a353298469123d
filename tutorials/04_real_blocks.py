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
# # 4. Real blocks: skip connections, LayerNorm, stacks
#
# The block of tutorials 2 and 3 had no skip connections and no normalisation. Real
# transformer blocks have both, and come in stacks. The implicit update survives all three.
# Symbols follow the [notation](../docs/notation.md) table: $h$ is the residual stream after
# attention, $u$ the MLP input, $W$ the MLP's first weight, $W', b'$ its second weight and
# output bias.
#
# **Theorem 2.2 at the MLP input** (Dherin et al. 2025, arXiv:2507.16003, Theorem 2.2 in v1
# and its skip-connection form). Whatever sits before the MLP, the MLP reads one vector $u$ at
# the query: $u_C$ with the context, $u_\emptyset$ with the tokens $Y$ left out. The proof of
# tutorial 2, $(W + \Delta W)\,u_\emptyset = W u_C$, needs nothing else:
#
# $$
# \Delta W = \frac{W (u_C - u_\emptyset)\, u_\emptyset^\top}{\|u_\emptyset\|^2},\qquad
# \Delta b' = h_C - h_\emptyset \quad\text{(blocks with an MLP skip)}.
# $$
#
# The bias update is needed because an MLP skip carries $h$ past the MLP: the output is
# $h + W' g(W u + b) + b'$, and $h_\emptyset + \Delta b' = h_C$.
#
# **What we will see** (every residual $\le$ `IDENTITY_RTOL` $= 10^{-12}$):
# 1. the skip block the package runs, whose MLP reads $x + A$, not $A$: its $\Delta W$ has the
#    row $(x + A(x))/\|x + A(x)\|^2$ (you write it), and $\Delta b' = \Delta A$;
# 2. a pre-LayerNorm block;
# 3. a stack of three pre-LN blocks, patched block by block, exact after *every* block;
# 4. removing only part $Y$ of the context from a stack: exact too, by sequential patches.

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
from minimal_icl.block import block_forward
from minimal_icl.data import regression_prompts
from minimal_icl.exercises.tutorial_04 import check_skip_patch
from minimal_icl.implicit import implicit_update, rank_one_update, remove_tokens

batch = regression_prompts(32, n_context=16, d=2, seed=1)
context, query = batch.context, batch.query  # (B, N, D), (B, D)
query_alone = query[:, None, :]  # (B, 1, D)


def without_bias_update(updates):
    """The same patches with Δb' left out."""
    return tuple(BlockPatch(u.delta_W, numpy.zeros_like(u.delta_b)) for u in updates)


# %% [markdown]
# ## Skip connections: the block the code runs
#
# The paper's skip form (appendix of v1) is
# $T(C, x) = x + A(C, x) + W' g(W A(C, x) + b) + b'$: its MLP reads $A(C, x)$, so its row is
# $A(C \setminus Y, x)/\|A(C \setminus Y, x)\|^2$ ($A(x)/\|A(x)\|^2$ for the query alone)
# and $\Delta b' = \delta A$. The package's block with
# `attn_skip=True, mlp_skip=True` (and no LayerNorm) is the GPT-style one:
#
# $$
# h = x + A(C, x),\qquad T(C, x) = h + W' g(W h + b) + b' .
# $$
#
# Its MLP reads $u = h = x + A$. At the query $x$ is the same with and without the tokens
# $Y$, so $u_C - u_\emptyset = A(C, x) - A(C \setminus Y, x) = \delta A$: $x$ cancels. For the
# query alone ($Y = C$) the context vector is $\Delta A = A(C, x) - A(x)$, and
#
# $$
# \Delta W = \frac{W\, \Delta A\, \big(x + A(x)\big)^\top}{\|x + A(x)\|^2},\qquad
# \Delta b' = h_C - h_\emptyset = \Delta A .
# $$
#
# The column is the paper's; the **row** is not.
#
# ### Your turn
#
# Write `skip_patch(W, x, A_with, A_without)` for the query alone ($Y = C$): `W` is $(M, D)$,
# `x`, `A_with` $= A(C, x)$ and `A_without` $= A(x)$ are $(B, D)$. Return
# `(delta_W, delta_b)`: $\Delta W$ of shape $(B, M, D)$ from the equation above (the column
# $W\Delta A$ is `(A_with - A_without) @ W.T`, `(B, M)`; the row divides each prompt's
# $x + A(x)$ by its own squared norm, `keepdims=True`; the outer product per prompt is
# `column[:, :, None] * row[:, None, :]`, as in tutorial 2), and
# $\Delta b' = h_C - h_\emptyset$ of shape $(B, D)$. The check compares them with the
# package and then runs the query alone through the block patched with your answer.

# %%
def skip_patch(W, x, A_with, A_without):
    """ΔW = W ΔA (x + A(x))ᵀ/‖x + A(x)‖² (B, M, D) and Δb′ = h_C − h_∅ (B, D)."""
    ### BEGIN SOLUTION
    a = x + A_without  # (B, D)  u_∅ = h_∅: the MLP input without the context
    column = (A_with - A_without) @ W.T  # (B, M)  W ΔA
    row = a / numpy.sum(a * a, axis=-1, keepdims=True)  # (B, D)  a/‖a‖²
    delta_W = column[:, :, None] * row[:, None, :]  # (B, M, D)
    delta_b = A_with - A_without  # (B, D)  h_C − h_∅ = ΔA
    ### END SOLUTION
    return delta_W, delta_b


# %%
check_skip_patch(skip_patch);

# %% [markdown]
# The package computes the same patch with `implicit_update`. On a skip block of its own we
# read $A(C, x)$ and $A(x)$ from the forward caches, check $\Delta b' = \Delta A$, check the row
# against both candidates, and drop $\Delta b'$ to see that the MLP patch alone is not enough.

# %%
skip_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                attn_skip=True, mlp_skip=True)
skip_params = init_params(skip_config, seed=0)
with_context, cache_C = forward(skip_params, skip_config, batch.tokens, last_only=True)
_, cache_0 = forward(skip_params, skip_config, query_alone)
A_C, A_0 = cache_C.blocks[0].A[:, -1], cache_0.blocks[0].A[:, -1]  # A(C, x), A(x)

(skip_update,) = implicit_update(skip_params, skip_config, context, query)
full_patch, _ = forward(skip_params, skip_config, query_alone, patches=(skip_update,))
weight_only, _ = forward(skip_params, skip_config, query_alone,
                         patches=without_bias_update((skip_update,)))

# %%

def inverse(a):
    """a/‖a‖² per prompt."""
    return a / numpy.sum(a * a, axis=-1, keepdims=True)


row = skip_update.row  # (B, D)
skip_table = {
    "Δb′ vs ΔA": relative_residual(skip_update.delta_b, A_C - A_0),
    "row vs (x + A(x))/‖x + A(x)‖²": relative_residual(row, inverse(query + A_0)),
    "row vs A(x)/‖A(x)‖² (paper's form)": relative_residual(row, inverse(A_0)),
    "output, ΔW and Δb′": relative_residual(full_patch[:, -1], with_context[:, -1]),
    "output, ΔW alone": relative_residual(weight_only[:, -1], with_context[:, -1]),
}
for name, value in skip_table.items():
    print(f"{name:36s} {value:.1e}")

# %% [markdown]
# ## Pre-LayerNorm
#
# In the GPT-style pre-LN block $h = z + A(\mathrm{LN}_1(z))$ and
# $\mathrm{out} = h + W' g(W\,\mathrm{LN}_2(h) + b) + b'$, the matrix $W$ sees
# $u = \mathrm{LN}_2(h)$. LayerNorm is not linear, so the context vector that $W$ sees is
# $\delta u = u_C - u_\emptyset = \mathrm{LN}_2(h_C) - \mathrm{LN}_2(h_\emptyset)$, which is not
# $\mathrm{LN}_2(\delta A)$; the patch is the one of the top of the page:
#
# $$
# \Delta W = \frac{W (u_C - u_\emptyset)\, u_\emptyset^\top}{\|u_\emptyset\|^2},\qquad
# \Delta b' = h_C - h_\emptyset .
# $$
#
# With the initial gain 1 and bias 0, $u_\emptyset$ has mean 0 and variance
# $\sigma^2/(\sigma^2 + \epsilon)$ ($\sigma^2$ the variance of $h_\emptyset$'s entries), so
# $\|u_\emptyset\| = \sqrt{D}\,\sigma/\sqrt{\sigma^2 + \epsilon} \approx \sqrt{D}$: zero only when
# all entries of $h_\emptyset$ are equal, so a pre-LN block is rarely degenerate.

# %%
ln_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=8, d_mlp=32,
                              activation="gelu", attn_skip=True, mlp_skip=True,
                              layer_norm=True)
ln_params = init_params(ln_config, seed=0)
ln_with_context, ln_cache = forward(ln_params, ln_config, batch.tokens, last_only=True)
(ln_update,) = implicit_update(ln_params, ln_config, context, query)
ln_patched, _ = forward(ln_params, ln_config, query_alone, patches=(ln_update,))
residual_ln = relative_residual(ln_patched[:, -1], ln_with_context[:, -1])
u_C = ln_cache.blocks[0].u[:, -1]
residual_u = relative_residual(ln_update.u_without + ln_update.delta_u, u_C)
norm_u0 = numpy.linalg.norm(ln_update.u_without, axis=1)
print(f"pre-LN block: residual {residual_ln:.1e};  u_∅ + δu vs u_C: {residual_u:.1e}")
print(f"‖u_∅‖ in [{norm_u0.min():.4f}, {norm_u0.max():.4f}]  (√D = {numpy.sqrt(3):.4f})")

# %% [markdown]
# ## A stack of three pre-LN blocks
#
# `implicit_update` returns one patch per block. For $Y = C$ block $l$'s $u_C, h_C$ come from
# the with-context run and its $u_\emptyset, h_\emptyset$ from block $l$ run on one token, the
# query's block-$l$ input in the with-context run; by induction the query's residual stream of the patched,
# context-free model equals the with-context one after every block. Run the query alone
# through the patched stack and compare **after every block**, the comparison of the paper's
# Figure 5 (later versions; `make reproduce` draws it for a trained 4-block model with
# `minimal_icl.experiments.deep`). Then patch only the first block.

# %%
stack_config = TransformerConfig(d_token=3, n_blocks=3, n_heads=2, d_head=8, d_mlp=32,
                                 activation="gelu", attn_skip=True, mlp_skip=True,
                                 layer_norm=True)
stack_params = init_params(stack_config, seed=0)
stack_updates = implicit_update(stack_params, stack_config, context, query)
stack_with_context, stack_cache = forward(stack_params, stack_config, batch.tokens)


# %%
def query_stream(out, cache):
    """The query's representation after each block: (n_blocks, B, D)."""
    return numpy.stack([z[:, -1] for z in cache.inputs[1:]] + [out[:, -1]])


reference = query_stream(stack_with_context, stack_cache)
streams = {}
for name, patches in {
    "every block patched": stack_updates,
    "first block only": (stack_updates[0], None, None),
    "no patch": None,
}.items():
    out, cache = forward(stack_params, stack_config, query_alone, patches=patches)
    streams[name] = query_stream(out, cache)  # (3, B, D)

# %% [markdown]
# The table and the left panel: relative difference of the query's representation after each
# block. The right panel: the size of each block's patch.

# %%
per_block = {name: [relative_residual(s[l], reference[l]) for l in range(3)]
             for name, s in streams.items()}
ranks = [int(numpy.linalg.matrix_rank(u.delta_W).max()) for u in stack_updates]
print(f"{'':20s}  block 1  block 2  block 3")
for name, values in per_block.items():
    print(f"{name:20s}", "  ".join(f"{v:.1e}" for v in values))
print("rank of ΔW per block:", ranks)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.5), constrained_layout=True)
for name, values in per_block.items():
    axes[0].semilogy([1, 2, 3], numpy.maximum(values, 1e-18), "o-", label=name)
axes[0].axhline(IDENTITY_RTOL, color="tab:red", ls="--", lw=0.8, label="IDENTITY_RTOL")
axes[0].set_xticks([1, 2, 3])
axes[0].set_xlabel("after block")
axes[0].set_ylabel("relative difference at the query")
axes[0].set_title("query alone (patched) vs with context")
axes[0].legend(fontsize=8)
norms_W = [numpy.linalg.norm(u.delta_W, axis=(1, 2)) for u in stack_updates]
norms_b = [numpy.linalg.norm(u.delta_b, axis=1) for u in stack_updates]
axes[1].boxplot(norms_W, positions=[0.8, 1.8, 2.8], widths=0.3)
axes[1].boxplot(norms_b, positions=[1.2, 2.2, 3.2], widths=0.3)
axes[1].set_xticks([1, 2, 3], ["block 1", "block 2", "block 3"])
axes[1].set_ylabel(r"$\|\Delta W\|_F$ (left), $\|\Delta b'\|$ (right)")
axes[1].set_title("size of each block's patch")
plt.show()

# %% [markdown]
# ## Partial context in a stack: exact, sequentially
#
# In one block any $Y \subseteq C$ works (tutorial 3). In a stack, removing only *part* of the
# context changes the kept tokens' representations after the first block, so the query in
# block 2 attends to different keys and values than in the full run. Patching the MLPs is
# still exact if the patches are built **in order, on the reduced prompt**
# (docs/theory.md §3). With $z_1 = [C \setminus Y, x]$, for $l = 1, \dots, L$:
#
# $$
# \begin{aligned}
# u_C, h_C &= \text{block } l\text{'s query state in the run on } [C, x],\\
# u_\emptyset, h_\emptyset &= \text{block } l\text{'s query state on } z_l
#   \text{ (the patched outputs of blocks } 1..l-1),\\
# \Delta W_l &= \frac{W_l (u_C - u_\emptyset)\, u_\emptyset^\top}{\|u_\emptyset\|^2},\quad
# \Delta b'_l = h_C - h_\emptyset,\qquad
# z_{l+1} = \text{block } l \text{ patched with } \Delta W_l, \Delta b'_l, \text{ on } z_l .
# \end{aligned}
# $$
#
# The patch acts at **every** position of the reduced prompt, so it changes the kept tokens'
# keys and values in the next block; the next patch is computed after that change, so the
# query's state after every block matches the full run. For $Y = C$ this is the construction
# of the previous section. The loop below is the construction, as `implicit_update`
# runs it:

# %%
removed = [0, 3, 4, 9]  # Y: four of the 16 context positions
full_out, full_cache = forward(stack_params, stack_config, batch.tokens)
z = remove_tokens(context, query, removed)  # z_1 = [C\Y, x], (B, 13, D)
sequential = []
for l, block in enumerate(stack_params.blocks):
    u_C, h_C = full_cache.blocks[l].u[:, -1], full_cache.blocks[l].h[:, -1]
    _, without = block_forward(z, block, stack_config, last_only=True)  # patched z_l
    u_0, h_0 = without.u[:, -1], without.h[:, -1]
    delta_W, _, _ = rank_one_update(block.mlp.W1, u_C - u_0, u_0)  # W δu u_∅ᵀ/‖u_∅‖²
    sequential.append(BlockPatch(delta_W, h_C - h_0))
    z, _ = block_forward(z, block, stack_config, sequential[-1])  # at every position

package = implicit_update(stack_params, stack_config, context, query, removed=removed)
gaps = [relative_residual(p.delta_W, q.delta_W) for p, q in zip(sequential, package)]
same_as_package = max(gaps)
du_ratio = numpy.median(numpy.linalg.norm(package[-1].delta_u, axis=1)
                        / numpy.linalg.norm(package[-1].u_without, axis=1))
print("the loop vs implicit_update(..., removed=Y), per block:",
      "  ".join(f"{g:.1e}" for g in gaps))
print(f"block 3: median ‖δu‖/‖u_∅‖ = {du_ratio:.4f}")

# %% [markdown]
# The two agree to rounding: exactly in blocks 1 and 2, to about $3 \times 10^{-14}$ relative
# in block 3. The package runs the last block of the full prompt at the query only, which
# rounds $u_C$ differently, and $\Delta W$ is built from the difference $u_C - u_\emptyset$
# of two nearby vectors ($\|\delta u\|$ is a median 0.24 % of $\|u_\emptyset\|$ in block 3),
# which magnifies that rounding. Take the full run's states from
# `forward(..., last_only=True)` instead and the loop gives the package's $\Delta W$ bit for
# bit.
#
# What goes wrong with a shortcut: take $u_\emptyset$ from the kept tokens' representations
# of the **full** run (what the query would see if the kept tokens did not notice that $Y$ was
# removed). Block 1 is still right (its inputs are the tokens themselves), block 2 is not: in
# the reduced prompt the kept tokens' inputs to block 2 differ from the full run's.

# %%
shortcut = []
for l, block in enumerate(stack_params.blocks):
    z_full = full_cache.inputs[l]  # block l's input in the FULL run
    _, without = block_forward(remove_tokens(z_full[:, :-1], z_full[:, -1], removed),
                               block, stack_config)
    u_C, h_C = full_cache.blocks[l].u[:, -1], full_cache.blocks[l].h[:, -1]
    u_0, h_0 = without.u[:, -1], without.h[:, -1]
    delta_W, _, _ = rank_one_update(block.mlp.W1, u_C - u_0, u_0)
    shortcut.append(BlockPatch(delta_W, h_C - h_0))

# %% [markdown]
# Run the reduced prompt through the stack with each set of patches and compare the query's
# state after every block with the full run:

# %%
reduced = remove_tokens(context, query, removed)
partial_reference = query_stream(full_out, full_cache)
partial = {}
for name, patches in {"sequential": sequential, "shortcut": tuple(shortcut),
                      "no patch": None}.items():
    out, cache = forward(stack_params, stack_config, reduced, patches=patches)
    partial[name] = [relative_residual(s, r)
                     for s, r in zip(query_stream(out, cache), partial_reference)]
    if name == "sequential":
        kept = [j for j in range(16) if j not in removed]
        kept_inputs = full_cache.inputs[1][:, kept]  # kept tokens, full run
        kept_change = relative_residual(cache.inputs[1][:, :-1], kept_inputs)

# %%
print(f"{'':12s}  block 1  block 2  block 3")
for name, values in partial.items():
    print(f"{name:12s}", "  ".join(f"{v:.1e}" for v in values))
print(f"kept tokens' input to block 2, reduced (patched) vs full run: {kept_change:.2f}")
partial_ranks = [int(numpy.linalg.matrix_rank(u.delta_W).max()) for u in package]
print("rank of ΔW per block:", partial_ranks)

# %% [markdown]
# The sequential patches reproduce the query's state after every block to rounding; the
# shortcut is right after block 1 only. The patches of a partial $Y$ depend on the kept tokens
# as well as on $Y$ and the query, and each is still rank 1.

# %% [markdown]
# ## Summary
#
# * At the MLP input $u$:
#   $\Delta W = W (u_C - u_\emptyset)\, u_\emptyset^\top/\|u_\emptyset\|^2$, and
#   $\Delta b' = h_C - h_\emptyset$ with an MLP skip.
# * The package's skip block reads $h = x + A$:
#   $\Delta W = W \Delta A\,(x + A(x))^\top/\|x + A(x)\|^2$, $\Delta b' = \Delta A$ (the
#   paper's form has the row $A(x)^\top/\|A(x)\|^2$).
# * Pre-LN: $u = \mathrm{LN}_2(h)$,
#   $\delta u = \mathrm{LN}_2(h_C) - \mathrm{LN}_2(h_\emptyset)$, and the same formula.
# * A stack, any $Y \subseteq C$: on $z_1 = [C \setminus Y, x]$, $\Delta W_l$ from block $l$
#   on the patched $z_l$, $z_{l+1} = T^{(l)}_{W_l + \Delta W_l,\, b'_l + \Delta b'_l}(z_l)$
#   (block $l$ with its patch); the query's state matches after every block.

# %% [markdown]
# ## Exercises
#
# 1. *(derivation)* For the package's skip block $T(C, x) = h + W' g(W h + b) + b'$,
#    $h = x + A(C, x)$, show that $\Delta b' = h_C - h_\emptyset$ is needed and sufficient once
#    $\Delta W$ is the rank-1 update at $u = h$. What is $\Delta b'$ for a block with the
#    attention skip but no MLP skip, and for the paper's skip form?
# 2. *(prediction, then measure)* Add a pre-LayerNorm to the skip block. Predict: (a) the rank
#    of $\Delta W$; (b) whether the row $u_\emptyset/\|u_\emptyset\|^2$ is orthogonal to the
#    all-ones vector $\mathbf{1}$, i.e. whether $\Delta W \mathbf{1} = 0$, with LN2's initial
#    gain 1 and bias 0, and (c) after the gain and bias have moved away from 1 and 0. Measure
#    on `ln_update` and on a model with perturbed `ln2`.
# 3. *(extension)* Patch a 3-block **causal** pre-LN stack with a partial $Y$ (remove the
#    last four context tokens, then four tokens in the middle): check that the query's state
#    matches after every block, and compare $\|\Delta W_l\|_F$ with the patches for $Y = C$.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** At the query the patched block on $[C \setminus Y, x]$ outputs
# $h_\emptyset + W' g((W + \Delta W) h_\emptyset + b) + b' + \Delta b'$. The rank-1 update
# gives $(W + \Delta W) h_\emptyset = W h_\emptyset + W (h_C - h_\emptyset) = W h_C$, so the
# MLP term equals the with-context one, $W' g(W h_C + b) + b'$. What is left is
# $h_\emptyset + \Delta b'$, which must equal $h_C$: with this $\Delta W$,
# $\Delta b' = h_C - h_\emptyset$ is the only choice (zero exactly when $h_C = h_\emptyset$).
# Here $h_C - h_\emptyset = A(C, x) - A(C \setminus Y, x) = \delta A$ because $x$ cancels.
# With the attention skip but no MLP skip the output is the MLP's alone, so $\Delta b' = 0$
# (the package returns zeros). In the paper's form the output carries $x + A(C, x)$ past the
# MLP, so again $\Delta b' = \delta A$; only the row changes, $a/\|a\|^2$ with
# $a = A(C \setminus Y, x)$ there against $a = x + A(C \setminus Y, x)$ here ($A(x)$ and
# $x + A(x)$ for the query alone).

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 2.** (a) Rank 1, as always: $\Delta W$ is a column times a row. (b) With gain 1
# and bias 0, $u = (h - \bar h \mathbf{1})/\sqrt{\sigma^2 + \epsilon}$ has mean 0, so
# $\mathbf{1}^\top u_\emptyset = 0$ and $\Delta W \mathbf{1} = 0$: the patch ignores shifts of
# the MLP input along $\mathbf{1}$ (and $\delta u \perp \mathbf{1}$ too). (c) With gain $\gamma$
# and bias $\beta$, $u = \gamma \odot n + \beta$ with $\mathbf{1}^\top n = 0$: now
# $(u_\emptyset - \beta)/\gamma \perp \mathbf{1}$, but $u_\emptyset$ itself is not (measured below:
# $|\cos(\text{row}, \mathbf{1})|$ up to about 0.1 here).

# %% jupyter={"source_hidden": true}
# Solution 2, measured.
ones = numpy.ones(3) / numpy.sqrt(3)
cos_init = numpy.abs(ln_update.row @ ones) / numpy.linalg.norm(ln_update.row, axis=1)
rng = numpy.random.default_rng(0)
block = ln_params.blocks[0]
moved = block.ln2._replace(gain=block.ln2.gain + 0.3 * rng.standard_normal(3),
                           bias=0.3 * rng.standard_normal(3))
moved_params = ln_params._replace(blocks=(block._replace(ln2=moved),))
(moved_update,) = implicit_update(moved_params, ln_config, context, query)
cos_moved = numpy.abs(moved_update.row @ ones) / numpy.linalg.norm(moved_update.row, axis=1)
normalised = (moved_update.u_without - moved.bias) / moved.gain
print(f"rank of ΔW: {numpy.linalg.matrix_rank(ln_update.delta_W).max()}")
print(f"|cos(row, 1)| at init: max {cos_init.max():.1e};  moved gain/bias: "
      f"max {cos_moved.max():.2f};  (u_∅ − β)/γ · 1: {numpy.abs(normalised.sum(1)).max():.1e}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 3.** `implicit_update(..., removed=Y)` builds the sequential patches; the check
# is the same per-block comparison as above. The partial patches are smaller than those for
# $Y = C$: removing four tokens of sixteen moves the query's state less than removing all.
# Even for the last tokens under a causal mask, which the kept tokens never see (without
# patches their inputs to block 2 are the full run's to rounding), the shortcut fails after
# block 1: block 1's patch acts at every position, so it changes the kept tokens' inputs to
# block 2 (by 0.07 relative here, printed below).

# %% jupyter={"source_hidden": true}
# Solution 3.
causal_config = TransformerConfig(d_token=3, n_blocks=3, n_heads=2, d_head=8, d_mlp=32,
                                  activation="gelu", causal=True, attn_skip=True,
                                  mlp_skip=True, layer_norm=True)
causal_params = init_params(causal_config, seed=2)
causal_out, causal_cache = forward(causal_params, causal_config, batch.tokens)
causal_reference = query_stream(causal_out, causal_cache)
size_all = [numpy.linalg.norm(u.delta_W, axis=(1, 2)).mean()
            for u in implicit_update(causal_params, causal_config, context, query)]
print("Y = C:           mean ‖ΔW_l‖_F", "  ".join(f"{v:.3f}" for v in size_all))

# %% jupyter={"source_hidden": true}
# Solution 3, continued: the last four tokens, then four in the middle.
moved = {}  # Y -> the kept tokens' change at block 2's input: unpatched, patched
for Y in ([12, 13, 14, 15], [6, 7, 8, 9]):
    updates = implicit_update(causal_params, causal_config, context, query, removed=Y)
    out, cache = forward(causal_params, causal_config, remove_tokens(context, query, Y),
                         patches=updates)
    errors = [relative_residual(s, r)
              for s, r in zip(query_stream(out, cache), causal_reference)]
    sizes = [numpy.linalg.norm(u.delta_W, axis=(1, 2)).mean() for u in updates]
    print(f"Y = {Y}: mean ‖ΔW_l‖_F", "  ".join(f"{v:.3f}" for v in sizes),
          "  error per block", "  ".join(f"{e:.0e}" for e in errors))
    assert max(errors) <= IDENTITY_RTOL
    kept = [j for j in range(16) if j not in Y]
    _, unpatched = forward(causal_params, causal_config, remove_tokens(context, query, Y))
    moved[tuple(Y)] = [
        relative_residual(c.inputs[1][:, :-1], causal_cache.inputs[1][:, kept])
        for c in (unpatched, cache)]
    print(f"  kept tokens' input to block 2 vs the full run: without patches"
          f" {moved[tuple(Y)][0]:.1e}, patched {moved[tuple(Y)][1]:.2f}")
assert moved[12, 13, 14, 15][0] <= IDENTITY_RTOL < moved[12, 13, 14, 15][1]

# %% [markdown]
# ## Checks

# %%
assert skip_table["Δb′ vs ΔA"] <= IDENTITY_RTOL
assert skip_table["row vs (x + A(x))/‖x + A(x)‖²"] <= IDENTITY_RTOL
assert skip_table["row vs A(x)/‖A(x)‖² (paper's form)"] > 1e-2  # the row is not A(x)'s
assert skip_table["output, ΔW and Δb′"] <= IDENTITY_RTOL
assert skip_table["output, ΔW alone"] > 1e-3  # Δb' is needed
assert residual_ln <= IDENTITY_RTOL and residual_u <= IDENTITY_RTOL
assert max(per_block["every block patched"]) <= IDENTITY_RTOL
assert per_block["first block only"][0] <= IDENTITY_RTOL  # block 1 is right ...
assert per_block["first block only"][2] > 1e-3  # ... but the later blocks need their own patch
assert ranks == [1, 1, 1] and partial_ranks == [1, 1, 1]
assert same_as_package <= IDENTITY_RTOL
assert max(partial["sequential"]) <= IDENTITY_RTOL  # partial Y in a stack: exact
assert partial["shortcut"][0] <= IDENTITY_RTOL and partial["shortcut"][2] > 1e-3
assert partial["no patch"][2] > 1e-3 and kept_change > 1e-3
