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
# # 4. Real blocks: skip connections, LayerNorm, stacks
#
# The block of tutorials 2 and 3 had no skip connections and no normalisation. Real
# transformer blocks have both, and come in stacks. The implicit update survives all three.
#
# **Skip connections (appendix of v1).** Dherin et al. (2025, arXiv:2507.16003) write a block
# with both residual connections as $T(C, x) = x + A(C, x) + W' g(W A(C, x) + b) + b'$. Then
#
# $$
# T_{W,\,b'}(C, x) = T_{W + \Delta W(Y),\; b' + \Delta b'(Y)}(C \setminus Y, x),\qquad
# \Delta b'(Y) = \delta A_x(Y),
# $$
#
# with the same rank-1 $\Delta W(Y)$: the context vector itself is added to the MLP's
# **output** bias $b'$ (a "steering vector"), because the skip carries $A$ past the MLP.
#
# **Pre-LayerNorm.** In the GPT-style block $h = z + \mathrm{Attn}(\mathrm{LN}_1(z))$,
# $\mathrm{out} = h + W' g(W\,\mathrm{LN}_2(h) + b) + b'$, the matrix $W$ sees
# $u = \mathrm{LN}_2(h)$. With $h_C, h_\emptyset$ the query's residual stream with and without
# the context and $u_C = \mathrm{LN}_2(h_C)$, $u_\emptyset = \mathrm{LN}_2(h_\emptyset)$:
#
# $$
# \Delta W = \frac{W (u_C - u_\emptyset)\, u_\emptyset^\top}{\|u_\emptyset\|^2},\qquad
# \Delta b' = h_C - h_\emptyset .
# $$
#
# The proof is the same line as before, applied at the MLP input $u$.
#
# **Stacks.** Compute the patches block by block: block $l$'s patch uses as inputs the
# with-context representations produced by block $l-1$. By induction the query's residual
# stream of the patched, context-free model equals the with-context one after every block,
# so the final output is reproduced exactly, and every block's $\Delta W$ is rank 1.
#
# **What we will check** (relative residual $\le$ `IDENTITY_RTOL`): each form reproduces the
# with-context output; $\Delta b' = \delta A$ in the skip form, and the patch fails without it;
# a 3-block pre-LN stack is reproduced after *every* block; patching only the first block of
# the stack is not enough; partial removals in a stack are refused with a clear error.

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
from minimal_icl.implicit import implicit_update

batch = regression_prompts(32, n_context=16, d=2, seed=1)
context, query = batch.context, batch.query
query_alone = query[:, None, :]  # (B, 1, D)


def without_bias_update(updates):
    """The same patches with Δb' left out."""
    return tuple(BlockPatch(u.delta_W, numpy.zeros_like(u.delta_b)) for u in updates)


# %% [markdown]
# ## Skip connections: the bias update $\Delta b' = \delta A$

# %%
skip_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                attn_skip=True, mlp_skip=True)
skip_params = init_params(skip_config, seed=0)
with_context, cache_C = forward(skip_params, skip_config, batch.tokens, last_only=True)
_, cache_0 = forward(skip_params, skip_config, query_alone)
delta_A = cache_C.blocks[0].A[:, -1] - cache_0.blocks[0].A[:, -1]  # δA = A(C, x) − A(x)

(skip_update,) = implicit_update(skip_params, skip_config, context, query)
full_patch, _ = forward(skip_params, skip_config, query_alone, patches=(skip_update,))
weight_only, _ = forward(skip_params, skip_config, query_alone,
                         patches=without_bias_update((skip_update,)))
residual_skip = relative_residual(full_patch[:, -1], with_context[:, -1])
residual_skip_no_bias = relative_residual(weight_only[:, -1], with_context[:, -1])
residual_bias_is_delta_A = relative_residual(skip_update.delta_b, delta_A)
print(f"Δb' vs δA:                      {residual_bias_is_delta_A:.1e}")
print(f"with ΔW and Δb':    residual     {residual_skip:.1e}")
print(f"with ΔW alone:      residual     {residual_skip_no_bias:.1e}")

# %% [markdown]
# ## Pre-LayerNorm
#
# LayerNorm is not linear, so the context vector seen by $W$ is $u_C - u_\emptyset$, not
# $\mathrm{LN}_2$ of anything simple. Note also that $u_\emptyset$ has norm about $\sqrt{D}$ times
# the LayerNorm gain: a pre-LN block is rarely degenerate.

# %%
ln_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=8, d_mlp=32,
                              activation="gelu", attn_skip=True, mlp_skip=True, layer_norm=True)
ln_params = init_params(ln_config, seed=0)
ln_with_context, ln_cache = forward(ln_params, ln_config, batch.tokens, last_only=True)
(ln_update,) = implicit_update(ln_params, ln_config, context, query)
ln_patched, _ = forward(ln_params, ln_config, query_alone, patches=(ln_update,))
residual_ln = relative_residual(ln_patched[:, -1], ln_with_context[:, -1])
u_C = ln_cache.blocks[0].u[:, -1]
residual_u = relative_residual(ln_update.u_without + ln_update.delta_u, u_C)
print(f"pre-LN block: residual {residual_ln:.1e};  u_∅ + δu vs u_C: {residual_u:.1e}")
print(f"‖u_∅‖ ranges over [{numpy.linalg.norm(ln_update.u_without, axis=1).min():.2f}, "
      f"{numpy.linalg.norm(ln_update.u_without, axis=1).max():.2f}]  (√D = {numpy.sqrt(3):.2f})")

# %% [markdown]
# ## A stack of three pre-LN blocks
#
# `implicit_update` returns one patch per block. Run the query alone through the patched stack
# and compare the query's residual stream with the with-context run **after every block** —
# the comparison of the paper's Figure 5 (later versions; `make reproduce` draws it for a trained
# 4-block model with `minimal_icl.experiments.deep`). Then patch only the first block.

# %%
stack_config = TransformerConfig(d_token=3, n_blocks=3, n_heads=2, d_head=8, d_mlp=32,
                                 activation="gelu", attn_skip=True, mlp_skip=True, layer_norm=True)
stack_params = init_params(stack_config, seed=0)
stack_updates = implicit_update(stack_params, stack_config, context, query)
stack_with_context, stack_cache = forward(stack_params, stack_config, batch.tokens, last_only=True)


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
    streams[name] = query_stream(out, cache)

per_block = {name: [relative_residual(s[l], reference[l]) for l in range(3)]
             for name, s in streams.items()}
ranks = [int(numpy.linalg.matrix_rank(u.delta_W).max()) for u in stack_updates]
for name, values in per_block.items():
    print(f"{name:20s}", "  ".join(f"{v:.1e}" for v in values))
print("rank of ΔW per block:", ranks)

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
# ## Partial removals in a stack
#
# In one block any $Y \subseteq C$ works (tutorial 3). In a stack, removing only *part* of the
# context changes the kept tokens' representations after the first block, so the query in
# later blocks attends to different keys and values; no patch of the MLPs at the query alone
# can be exact. The package refuses rather than return something approximate:

# %%
try:
    implicit_update(stack_params, stack_config, context, query, removed=[0, 1])
    stack_error = None
except ValueError as error:
    stack_error = error
    print(error)

# %% [markdown]
# ## Exercise
#
# Train a two-block pre-LN model for a few hundred steps
# (`minimal_icl.train.train` with your own `TransformerConfig`) and check that the stacked
# patches still reproduce its predictions. Which block gets the largest $\|\Delta W\|_F$?
#
# The solution is folded away below (click to open it).

# %% jupyter={"source_hidden": true}
# Solution (a short run; the answer about the norms depends on the run).
from minimal_icl.train import OptimizerSettings, train

two_config = TransformerConfig(d_token=3, n_blocks=2, n_heads=2, d_head=8, d_mlp=32,
                               activation="gelu", attn_skip=True, mlp_skip=True, layer_norm=True)
two = train(two_config, init_params(two_config, seed=1), OptimizerSettings(lr=3e-3), steps=200,
            batch_size=64, n_context=16, d=2, seed=1)
two_updates = implicit_update(two.params, two_config, context, query)
two_with_context, _ = forward(two.params, two_config, batch.tokens, last_only=True)
two_patched, _ = forward(two.params, two_config, query_alone, patches=two_updates)
print(f"held-out MSE {two.history.val_loss[0]:.2f} -> {two.history.val_loss[-1]:.2f}; "
      f"patched vs with context: {relative_residual(two_patched[:, -1], two_with_context[:, -1]):.1e}")
print("mean ‖ΔW‖_F per block:",
      [round(float(numpy.mean(numpy.linalg.norm(u.delta_W, axis=(1, 2)))), 3) for u in two_updates])

# %% [markdown]
# ## Checks

# %%
assert residual_bias_is_delta_A <= IDENTITY_RTOL
assert residual_skip <= IDENTITY_RTOL
assert residual_skip_no_bias > 1e-3  # Δb' is needed
assert residual_ln <= IDENTITY_RTOL and residual_u <= IDENTITY_RTOL
assert max(per_block["every block patched"]) <= IDENTITY_RTOL
assert per_block["first block only"][0] <= IDENTITY_RTOL  # block 1 is right ...
assert per_block["first block only"][2] > 1e-3  # ... but the later blocks need their own patch
assert ranks == [1, 1, 1]
assert isinstance(stack_error, ValueError) and "single block" in str(stack_error)
