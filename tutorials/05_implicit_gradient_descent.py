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
# # 5. Implicit gradient descent, token by token
#
# Feed the context to a contextual block one token at a time. Each new token moves the
# implicit weights $W_i = W_0 + \Delta W(c_1, \dots, c_i)$ of tutorial 2 a little. Dherin et al.
# (2025, arXiv:2507.16003, **Proposition 3.1 in v1**) show that these moves are gradient steps.
#
# **Proposition 3.1 (v1).** Let $A_i = A(c_1, \dots, c_i, x)$, $A_0 = A(x)$, and
# $W_i = W_0 + \Delta W(c_1..c_i)$ with query $x$. Then
#
# $$
# W_{i+1} = W_i - h\, \nabla_W L_i(W_i),\qquad h = \frac{1}{\|A(x)\|^2},\qquad
# L_i(W) = \operatorname{trace}(\Delta_i^\top W),\quad \Delta_i = W_0 (A_i - A_{i+1})\, A(x)^\top,
# $$
#
# and $T_{W_i}(x) = T_{W_0}(c_1, \dots, c_i, x)$ for every $i$.
#
# Read it carefully: $L_i$ is **linear** in $W$, so $\nabla L_i = \Delta_i$ at every $W$; the
# step size depends only on the query; every increment has the right factor $A(x)^\top$, so the
# whole path $W_i - W_0$ stays rank 1; and
# $\|W_{i+1} - W_i\|_F = \|W_0 (A_{i+1} - A_i)\| / \|A(x)\|$.
#
# **Factorised form (appendix of v1).** Consuming tokens from the front while the rest stays in
# context, $W_i = W_{i-1}(I + h_i \mathcal{A}_i)$ with
# $\mathcal{A}_i = \Delta A(c_i)\, A(c_{i+1}..c_n, x)^\top$, $h_i = 1/\|A(c_{i+1}..c_n, x)\|^2$. It
# ends at a $W_n$ with $T_{W_n}(x) = T_{W_0}(C, x)$, yet $W_n \ne W_0 + \Delta W(C)$: another
# face of the non-uniqueness of tutorial 3.
#
# **What we will check**: the step identity and the output identity for every $i$ (relative
# residual $\le$ `IDENTITY_RTOL`); that $\nabla L_i$ is what finite differences say, at two
# different $W$ (`GRADCHECK_RTOL`); the rank-1 path; the factorised path's endpoint. Then a
# **caveat** before reading the paper's convergence figure as evidence of learning: the
# increments shrink like $1/i$ even for *random, untrained* softmax weights — and do not shrink
# at all for linear attention.

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
from minimal_icl.data import regression_prompts
from minimal_icl.dynamics import factorised_path, implicit_path
from minimal_icl.experiments.common import loglog_slope, mean_se
from minimal_icl.gradcheck import numerical_gradient, relative_error
from minimal_icl.implicit import implicit_update

config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                           attention="softmax", activation="relu")
params = init_params(config, seed=0)
N = 20
batch = regression_prompts(16, n_context=N, d=2, seed=1)
context, query = batch.context, batch.query
path = implicit_path(params, config, context, query)
print("W0", path.W0.shape, " A(x)", path.A_query.shape, " A_i", path.A_prefix.shape,
      " h", path.step_size.shape)

# %% [markdown]
# ## Each token is one gradient step

# %%
step_residuals = []
for i in range(N):
    W_i = path.weights(i)  # (B, M, D)
    step = W_i - path.step_size[:, None, None] * path.gradient(i)  # W_i − h ∇L_i(W_i)
    step_residuals.append(relative_residual(step, path.weights(i + 1)))

output_residuals, predictions = [], []
query_alone = query[:, None, :]
for i in range(N + 1):
    prefix = numpy.concatenate([context[:, :i], query_alone], axis=1)  # [c_1..c_i, x]
    with_prefix, _ = forward(params, config, prefix, last_only=True)
    patched, _ = forward(params, config, query_alone, patches=path.patch(i))
    output_residuals.append(relative_residual(patched[:, -1], with_prefix[:, -1]))
    predictions.append(patched[:, -1, -1])
print(f"step identity:   largest residual {max(step_residuals):.1e}")
print(f"output identity: largest residual {max(output_residuals):.1e}")

# %% [markdown]
# The gradient of the linear "loss" $L_i(W) = \mathrm{trace}(\Delta_i^\top W)$ is $\Delta_i$
# wherever we take it. Check it against finite differences of `path.loss` at $W_0$ and at a
# random $W$, for prompt 0 and step $i = 5$.

# %%
i = 5
random_W = numpy.random.default_rng(2).standard_normal(path.W0.shape)
gradient_errors = []
for W in (path.W0, random_W):
    numeric = numerical_gradient(lambda V: float(path.loss(i, V)[0]), W)
    gradient_errors.append(relative_error(path.gradient(i)[0], numeric))
print("relative error of ∇L_5 at W0 and at a random W:", [f"{e:.1e}" for e in gradient_errors])

# %% [markdown]
# The whole path is rank 1, with the same right factor $A(x)^\top$; and the increment norms
# stored in `path.increment_norms` agree with the matrices.

# %%
path_ranks = [int(numpy.linalg.matrix_rank(path.weights(i) - path.W0).max()) for i in range(1, N + 1)]
direct_norms = numpy.stack([numpy.linalg.norm(path.weights(i + 1) - path.weights(i), axis=(1, 2))
                            for i in range(N)], axis=1)  # (B, N)
residual_norms = relative_residual(direct_norms, path.increment_norms)
print("rank of W_i − W_0 for i = 1..N:", set(path_ranks))

fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.5), constrained_layout=True)
predictions = numpy.stack(predictions, axis=1)  # (B, N+1)
for b in range(5):
    axes[0].plot(range(N + 1), predictions[b], "o-", ms=3)
axes[0].set_xlabel("tokens consumed i")
axes[0].set_ylabel(r"prediction $T_{W_i}(x)$")
axes[0].set_title("five prompts along their implicit paths")
for b in range(5):
    axes[1].semilogy(range(1, N + 1), path.increment_norms[b], "o-", ms=3)
axes[1].set_xlabel("step i")
axes[1].set_ylabel(r"$\|W_{i} - W_{i-1}\|_F$")
axes[1].set_title("step sizes along the path")
plt.show()

# %% [markdown]
# ## The factorised path ends elsewhere
#
# `factorised_path` builds $W_i = W_{i-1}(I + h_i\mathcal{A}_i)$. Its endpoint reproduces the
# with-context output from the query alone, like $W_0 + \Delta W(C)$ — but it is a different
# matrix: $W_n - W_0$ is in general of full rank, and (being another solution of
# $X A(x) = W_0 \Delta A$) at least as large as the minimum-norm $\Delta W(C)$.

# %%
factorised = factorised_path(params, config, context, query)
with_context, _ = forward(params, config, batch.tokens, last_only=True)
factorised_out, _ = forward(params, config, query_alone, patches=factorised.patch(N))
residual_factorised = relative_residual(factorised_out[:, -1], with_context[:, -1])
(update,) = implicit_update(params, config, context, query)
W_n_minus_W0 = factorised.weights(N) - factorised.W0
factorised_ranks = numpy.linalg.matrix_rank(W_n_minus_W0)
norm_ratio = numpy.linalg.norm(W_n_minus_W0, axis=(1, 2)) / numpy.linalg.norm(update.delta_W, axis=(1, 2))
print(f"factorised endpoint: residual {residual_factorised:.1e}; rank of W_n − W_0: "
      f"{sorted(set(factorised_ranks.tolist()))}; ‖W_n − W_0‖/‖ΔW(C)‖ ≥ {norm_ratio.min():.2f}")

# %% [markdown]
# ## Caveat: the steps shrink like $1/i$ without any learning
#
# $\|W_{i+1} - W_i\|_F = \|W_0(A_{i+1} - A_i)\|/\|A(x)\|$. With softmax attention the new token
# $c_{i+1}$ receives a weight of about $1/(i+1)$, so $A_{i+1} - A_i$ is of order $1/i$ — for
# **any** weights, trained or not. The paper's Figure 3 (the increments vanish as the context
# grows) is therefore expected before any training. Un-normalised linear attention adds each
# token with a fixed weight, and its increments do not decay. Measure both with random weights:
# mean and standard error over 200 prompts with $N = 200$, and the log-log slope for $i \ge 10$.

# %%
n_long = 200
long_batch = regression_prompts(200, n_context=n_long, d=2, seed=2)
steps = numpy.arange(1, n_long + 1)
slopes = {}
fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
for attention, color in (("softmax", "tab:blue"), ("linear", "tab:orange")):
    random_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                      attention=attention, activation="relu")
    random_params = init_params(random_config, seed=0)
    long_path = implicit_path(random_params, random_config, long_batch.context, long_batch.query)
    mean, se = mean_se(long_path.increment_norms, axis=0)
    slopes[attention] = loglog_slope(steps[9:], mean[9:])
    ax.loglog(steps, mean, color=color, label=f"{attention}, random weights (slope {slopes[attention]:.2f})")
    ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.25)
ax.loglog(steps, 3.0 / steps, "k--", lw=0.8, label=r"$\propto 1/i$")
ax.set_xlabel("context length i")
ax.set_ylabel(r"$\|W_{i+1} - W_i\|_F$ (mean ± s.e.)")
ax.set_title("untrained blocks")
ax.legend(fontsize=8)
plt.show()
print({k: round(v, 3) for k, v in slopes.items()})

# %% [markdown]
# So convergence of the implicit path is, first of all, a property of softmax normalisation;
# what training adds must be read against this random-weight baseline (tutorial 6 does).
#
# ## Exercise
#
# Repeat the caveat measurement with `attn_skip=True, layer_norm=True`, for both kinds of
# attention. Does LayerNorm change the slopes? (Hint: LayerNorm pins $\|u\|$ near $\sqrt{D}$.)
#
# The solution is folded away below (click to open it).

# %% jupyter={"source_hidden": true}
# Solution. Softmax: unchanged (the new token still gets a weight ~1/(i+1), and LN2 is smooth).
# Linear attention: now ~1/i as well! A(c_1..c_i, x) grows like i, LN2 divides h by its norm
# ~ i, so u_i converges and its increments are ~1/i. Normalisation again, not learning.
for attention in ("softmax", "linear"):
    ln_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=8, d_mlp=32,
                                  attention=attention, attn_skip=True, layer_norm=True)
    ln_path = implicit_path(init_params(ln_config, seed=0), ln_config,
                            long_batch.context, long_batch.query)
    ln_mean = numpy.mean(ln_path.increment_norms, axis=0)
    print(f"{attention:8s} with skip + LayerNorm: slope {loglog_slope(steps[9:], ln_mean[9:]):.2f}")

# %% [markdown]
# ## Checks

# %%
assert max(step_residuals) <= IDENTITY_RTOL
assert max(output_residuals) <= IDENTITY_RTOL
assert max(gradient_errors) <= GRADCHECK_RTOL
assert set(path_ranks) == {1}
assert residual_norms <= IDENTITY_RTOL
assert residual_factorised <= IDENTITY_RTOL
assert factorised_ranks.max() > 1  # not the rank-1 ΔW(C)
assert norm_ratio.min() >= 1.0 - IDENTITY_RTOL  # ΔW(C) has the minimum norm
assert -1.2 <= slopes["softmax"] <= -0.8  # ~1/i for random softmax weights
assert abs(slopes["linear"]) <= 0.1  # no decay for linear attention
