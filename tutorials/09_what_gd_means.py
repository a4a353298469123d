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
# # 9. What "gradient descent" means here
#
# Symbols as in the [notation](../docs/notation.md) table (the paper writes the step size
# $\eta_x$ as $h$ and the gradient $G_i$ as $\Delta_i$).
#
# Proposition 3.1 of Dherin et al. (2025, arXiv:2507.16003, v1) writes the token-by-token
# implicit weights as gradient steps,
#
# $$
# W_{i+1} = W_i - \eta_x\,\nabla_W L_i(W_i),\qquad L_i(W) = \operatorname{trace}(G_i^\top W),\qquad
# G_i = W_0 (A_i - A_{i+1})\, A(x)^\top,\qquad \eta_x = 1/\|A(x)\|^2 .
# $$
#
# The statement is exact (tutorial 5 checks it to $10^{-15}$), and
# $T_{W_i}(x) = T_{W_0}(c_1, \dots, c_i, x)$: the path's prediction after $i$ steps is the
# block's prediction from the first $i$ demonstrations. This tutorial asks what kind of
# gradient descent it is, by comparing it with a learner that fits the demonstrations.
#
# 1. **Order.** The path $W_1, W_2, \dots$ depends on the order of the demonstrations; the
#    endpoint $W_N$ does not: it depends on the context only through $A(C, x)$, which one
#    attention layer without positions computes permutation-invariantly. Explicit gradient
#    descent depends on order only in its *online* form (SGD, one pair at a time);
#    full-batch GD sees a sum over the pairs and does not. Shen, Mishra & Khashabi (2024,
#    ICML) measure order sensitivity as the spread of predictions across orders; we measure
#    it the same way.
# 2. **The losses.** Each $L_i$ is *linear* in $W$: its gradient $G_i$ is the same at every
#    $W$, and unless $G_i = 0$ it is unbounded below and has no minimiser. No target $y$
#    appears in $L_i$.
# 3. **Does the path learn?** The implicit path exists for any weights. Whether walking it
#    lowers the task error is a property of *training*, and even then only on average: single
#    steps raise the query error about half of the time.
# 4. **One query at a time.** The implicit weights are built for one query; explicit gradient
#    descent produces one weight for every query.
#
# **What we will check**: the endpoint's spread across orders at rounding level and the
# path's far above it; online SGD spread, full-batch GD not; the linearity of $L_i$
# (`IDENTITY_RTOL`); the fraction of single steps that raise the error, and the trend, for a
# random and a trained block; the query-specificity of $W_N$.

# %%
import os
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy

from minimal_icl import IDENTITY_RTOL, TransformerConfig, forward, init_params, relative_residual
from minimal_icl.data import mse, regression_prompts
from minimal_icl.dynamics import implicit_path
from minimal_icl.exercises.tutorial_09 import (  # the checks, and the package's answers
    check_fraction_of_rising_steps,
    check_order_spread,
    order_spread,
    rising_fraction,
)
from minimal_icl.train import paper_setting, train_setup

FAST = os.environ.get("MINIMAL_ICL_FAST") == "1"  # the test suite's short run

setup = paper_setting(fast=True)  # the paper's block: N = 50, d = 2, softmax, no skips
config, N = setup.config, setup.n_context
random_params = init_params(config, seed=0)
trained = train_setup(replace(setup, steps=300 if FAST else 1500), seed=0).params
batch = regression_prompts(256, n_context=N, d=setup.d, seed=7)
context, query = batch.context, batch.query
query_alone = query[:, None, :]  # (B, 1, D): the query without its context

# %% [markdown]
# ## 1. Order: the path depends on it, the endpoint does not
#
# For one order of the demonstrations, the path's predictions are
# $T_{W_i}(x)$ for $i = 0, \dots, N$: the query alone, run with the patch of the first $i$
# tokens.

# %%
def path_predictions(params, context):
    """T_{W_i}(x) along the implicit path of this context order, i = 0..N; (B, N+1)."""
    path = implicit_path(params, config, context, query)
    return numpy.stack([forward(params, config, query_alone, patches=path.patch(i))[0][:, -1, -1]
                        for i in range(N + 1)], axis=1)


rng = numpy.random.default_rng(0)
orders = [numpy.arange(N)] + [rng.permutation(N) for _ in range(9)]  # R = 10 orders
implicit_predictions = numpy.stack([path_predictions(trained, context[:, o]) for o in orders])
print("predictions (R orders, B prompts, N+1 steps):", implicit_predictions.shape)

# %% [markdown]
# ### Your turn: the spread across orders
#
# Shen, Mishra & Khashabi's measure: for predictions $p_{r,b,i}$ of orders $r = 1..R$, prompts
# $b$ and steps $i$, the standard deviation across orders, averaged over prompts,
#
# $$ \mathrm{spread}_i = \frac1B \sum_b \operatorname{std}_r\, p_{r,b,i}
#    \qquad(\text{population std, } \tfrac1R \text{ inside the square root}). $$
#
# `predictions` is $(R, B, N+1)$; store the $(N+1,)$ spreads in `spread`.

# %%
def spread_across_orders(predictions):
    """(1/B) Σ_b std_r p[r, b, i] for predictions (R, B, N+1); returns (N+1,)."""
    ### BEGIN SOLUTION
    spread = numpy.std(predictions, axis=0).mean(axis=0)
    ### END SOLUTION
    return spread


# %%
check_order_spread(spread_across_orders);

# %% [markdown]
# From here on the page uses the package's `order_spread` (the same formula), so that it runs
# whatever your cell holds.

# %%
spread_implicit = order_spread(implicit_predictions)
print("spread of T_{W_i}(x) across 10 orders, trained block:")
for i in (1, 10, 25, 49, N):
    print(f"  i = {i:2d}: {spread_implicit[i]:.1e}" + ("   (the endpoint)" if i == N else ""))

# the same in weight space, for the random block: endpoints agree, midpoints do not
reference = implicit_path(random_params, config, context, query)
endpoint_residuals, midpoint_gaps = [], []
for o in orders[1:]:
    shuffled = implicit_path(random_params, config, context[:, o], query)
    endpoint_residuals.append(relative_residual(shuffled.weights(N), reference.weights(N)))
    midpoint_gaps.append(relative_residual(shuffled.weights(N // 2), reference.weights(N // 2)))
print(f"random block, W_N over 10 orders: largest relative difference"
      f" {max(endpoint_residuals):.1e}; W_25: smallest {min(midpoint_gaps):.1e}")

# %% [markdown]
# **Explicit gradient descent, both forms.** Online SGD takes one pair at a time,
# $\theta \leftarrow \theta - \eta\,(\theta x_j - y_j)\, x_j^\top$, so its $i$-th iterate has
# seen $c_1..c_i$ in this order. Full-batch GD takes
# $\theta \leftarrow \theta - \eta\,\frac1N \sum_j (\theta x_j - y_j)\, x_j^\top$: a sum, the
# same for every order.

# %%
x, y, x_q = batch.context_x, batch.context_y, batch.query_x  # (B, N, d), (B, N), (B, d)


def online_sgd_predictions(x, y, eta=0.1):
    """⟨θ_i, x_q⟩ after i online SGD steps on ½(θ x_j − y_j)², i = 0..N; (B, N+1)."""
    theta = numpy.zeros((x.shape[0], x.shape[2]))
    out = [numpy.sum(theta * x_q, axis=1)]  # θ_0 = 0 predicts 0
    for j in range(x.shape[1]):
        residual = numpy.sum(theta * x[:, j], axis=1) - y[:, j]  # (B,)
        theta = theta - eta * residual[:, None] * x[:, j]
        out.append(numpy.sum(theta * x_q, axis=1))
    return numpy.stack(out, axis=1)


# %%
def full_batch_gd_prediction(x, y, eta=0.1, steps=50):
    """⟨θ_k, x_q⟩ after k full-batch GD steps on (1/2N) Σ_j (θ x_j − y_j)²; (B,)."""
    theta = numpy.zeros((x.shape[0], x.shape[2]))
    for _ in range(steps):
        gradient = numpy.einsum("bj,bjd->bd", numpy.sum(theta[:, None] * x, axis=-1) - y, x)
        theta = theta - eta * gradient / x.shape[1]
    return numpy.sum(theta * x_q, axis=1)


# %%
sgd_predictions = numpy.stack([online_sgd_predictions(x[:, o], y[:, o]) for o in orders])
spread_sgd = order_spread(sgd_predictions)
full_batch = numpy.stack([full_batch_gd_prediction(x[:, o], y[:, o]) for o in orders])
spread_full_batch = float(order_spread(full_batch[..., None])[0])
print(f"endpoint spread across orders: implicit path {spread_implicit[N]:.1e}, "
      f"online SGD {spread_sgd[N]:.1e}, full-batch GD {spread_full_batch:.1e}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
steps = range(1, N + 1)  # i = 0 sees no demonstration: every order predicts the same
ax.plot(steps, spread_implicit[1:], label="implicit path (trained block)")
ax.plot(steps, spread_sgd[1:], label=r"online SGD, $\eta = 0.1$")
ax.axhline(spread_full_batch, color="k", ls=":", lw=1, label="full-batch GD (any step)")
ax.set_xlabel("demonstrations consumed i")
ax.set_ylabel("spread across 10 orders")
ax.set_title("the implicit path's end is order-free; online SGD's is not")
ax.set_yscale("log")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The implicit path is order-sensitive all the way and then lands on one endpoint. Online
# SGD's spread shrinks as it converges on these noiseless prompts, but does not vanish at its
# endpoint; full-batch GD's is at rounding level. The facts about the endpoints are structural:
# the block's query output is a permutation-invariant function of the context (no positions,
# one block), and online SGD's updates do not commute. Exercise 2 asks what a causal mask
# changes.
#
# ## 2. The losses $L_i$ are linear and have no minimiser
#
# Walk from $W_i$ along the negative gradient, $W_i - s\,G_i$. For a data-fit loss the value
# would bottom out at a minimiser; $L_i$ falls on a straight line forever,
# $L_i(W_i - s\,G_i) = L_i(W_i) - s\,\|G_i\|_F^2$, and the proposition's step $s = \eta_x$ is
# just one point on it.

# %%
i = 10
W_i = reference.weights(i)  # the random block's path, in the original order
G_i = reference.gradient(i)  # no W argument: the same at every W
eta_x = reference.step_size[0]
s_values = numpy.linspace(0, 5, 11) * eta_x
along = numpy.array([reference.loss(i, W_i - s * G_i)[0] for s in s_values])
line = reference.loss(i, W_i)[0] - s_values * numpy.sum(G_i[0] ** 2)
residual_linear = relative_residual(along, line)
drop = reference.loss(i, W_i)[0] - reference.loss(i, reference.weights(i + 1))[0]
drop_residual = relative_residual(numpy.array(drop), numpy.array(eta_x * numpy.sum(G_i[0] ** 2)))
print(f"L_10 along the line vs a straight line: {residual_linear:.1e}; "
      f"drop at s = η_x vs η_x ‖G_10‖²: {drop_residual:.1e}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
ax.plot(s_values / eta_x, along, "o-", ms=4)
ax.axvline(1.0, color="tab:red", ls="--", lw=0.8, label=r"the step of Prop. 3.1 ($s = \eta_x$)")
ax.set_xlabel(r"$s / \eta_x$")
ax.set_ylabel(r"$L_{10}(W_{10} - s\,G_{10})$")
ax.set_title("a linear 'loss': no bottom")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Does walking the path lower the task error?
#
# The squared error of the prediction $T_{W_i}(x)_D$ (the output's last coordinate) against
# the target $\langle w, x_q\rangle$, for every prompt $b$ and step $i$:
# $e_{b,i} = (T_{W_i}(x_b)_D - \langle w_b, x_{q,b}\rangle)^2$. A block that "gets
# better with every demonstration" would have $e_{b,i+1} \le e_{b,i}$ for every step.
#
# ### Your turn: the fraction of single steps that raise the error
#
# $$ \text{fraction} = \frac{1}{BN}\sum_{b=1}^{B}\sum_{i=0}^{N-1}
#    \big[\, e_{b,i+1} > e_{b,i} \,\big] . $$
#
# `errors` is $(B, N+1)$; store the fraction, one number, in `fraction`.

# %%
def fraction_of_rising_steps(errors):
    """The fraction of (b, i), i < N, with e[b, i+1] > e[b, i], for errors (B, N+1)."""
    ### BEGIN SOLUTION
    fraction = numpy.mean(errors[:, 1:] > errors[:, :-1])
    ### END SOLUTION
    return fraction


# %%
check_fraction_of_rising_steps(fraction_of_rising_steps);

# %% [markdown]
# The package's `rising_fraction` is the same formula. The errors along the path of the
# random and the trained block, in the original order:

# %%
errors = {
    "random weights": (path_predictions(random_params, context) - batch.target[:, None]) ** 2,
    "trained": (implicit_predictions[0] - batch.target[:, None]) ** 2,  # the original order
}
rising, mean_error = {}, {}
for name, e in errors.items():
    rising[name], mean_error[name] = rising_fraction(e), e.mean(axis=0)  # (N+1,)
    print(f"{name:15s} steps that raise the error: {100 * rising[name]:4.1f} %;  mean error"
          f" i = 0: {mean_error[name][0]:.2f}, i = 1: {mean_error[name][1]:.2f},"
          f" i = {N}: {mean_error[name][N]:.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
for name, values in mean_error.items():
    ax.plot(range(N + 1), values, lw=2, label=f"{name}: mean over {len(batch.target)} prompts")
for b in range(3):
    ax.plot(range(N + 1), errors["trained"][b], lw=0.7, color="tab:orange", alpha=0.6,
            label="trained: three single prompts" if b == 0 else None)
ax.set_yscale("log")
ax.set_xlabel("demonstrations consumed i")
ax.set_ylabel(r"squared error of $T_{W_i}(x)$")
ax.set_title("the trend falls after training; single steps do not")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# What is true: after training, the **average** error falls along the path, from about
# $d = 2$ (the zero predictor's error) at $i = 0$ to far below it at $i = N$; for random
# weights it does not. What is not true is that the trained block "gets better with every demonstration":
# about half of the single steps raise the query error (printed above for the short
# training run; 46–47 % on sets of 4 096 held-out prompts for the fully trained
# `paper_setting()` block, seed 0), and even the mean error rises from $i = 0$ to $i = 1$
# (printed above; for the fully trained block it is a small rise of about 0.1: from 1.98 to
# 2.09 and from 2.00 to 2.11 on two sets of 131 072 held-out prompts, 0.11 ± 0.01 s.e. each,
# while a single set of 16 384 prompts gives anywhere from 0.03 to 0.14, ± 0.03). That is a
# shortcoming of what the block learned, not of one demonstration: fitting $c_1$ alone with
# the smallest weight, $\theta = y_1 x_1^\top/\|x_1\|^2$, halves the mean error (from $d$ to
# $d - 1$, since it recovers $w$ along $x_1$; 0.99 on the same prompts). The random block raises the error as often, without the trend.
# Exercise 4 shows that online SGD, an explicit learner, also raises the error on many steps.
#
# ## 4. The implicit weights serve one query
#
# Take $W_N$ built for one query $x$ and use it, without context, on a *different* query
# $x' = (x_q'; 0)$ of the same task: compare the errors
#
# $$
# \big(T_{W_N}(x)_D - \langle w, x_q\rangle\big)^2,\qquad
# \big(T_{W_N}(x')_D - \langle w, x_q'\rangle\big)^2,\qquad
# \big(T_{W_0}(C, x')_D - \langle w, x_q'\rangle\big)^2,
# $$
#
# averaged over the prompts. Explicit gradient descent gives a weight that serves every
# query; the implicit one does not transfer.

# %%
trained_path = implicit_path(trained, config, context, query)
W_N_patch = trained_path.patch(N)  # W_N − W_0, built for each prompt's own query x
other = numpy.array(query)  # x' = (x_q'; 0): a new input of the same task w
other[:, :-1] = numpy.random.default_rng(1).standard_normal(other[:, :-1].shape)
other_target = numpy.sum(batch.w * other[:, :-1], axis=1)  # ⟨w, x_q'⟩, (B,)


def prediction(tokens, patches=None):
    """The last coordinate of the output at the last token, (B,)."""
    return forward(trained, config, tokens, patches=patches, last_only=True)[0][:, -1, -1]


own = mse(prediction(query_alone, W_N_patch), batch.target)
borrowed = mse(prediction(other[:, None, :], W_N_patch), other_target)
with_context_other = mse(prediction(numpy.concatenate([context, other[:, None, :]], axis=1)),
                         other_target)
zero_other = mse(numpy.zeros_like(other_target), other_target)  # predicting 0 on x'
print(f"W_N on its own query:             MSE {own:.2f}")
print(f"W_N on another query, no context: MSE {borrowed:.2f}")
print(f"the model with context on it:     MSE {with_context_other:.2f}")
print(f"predicting zero on it:            MSE {zero_other:.2f}")

# %% [markdown]
# On another query, $W_N$ without the context does many times worse than on its own, and
# here, after a short training run, worse even than predicting zero (whose error
# $\langle w, x_q'\rangle^2$ has mean $\|w\|^2$ over $x_q'$, and $d = 2$ over tasks; these 256
# prompts give less, printed above: the error has a heavy tail, standard deviation
# $\sqrt{20}$, so their mean has a standard error of 0.28). The model that reads the context
# again does as well on $x'$ as on $x$. Longer training leaves some of the task in $W_N$: for
# the fully trained `paper_setting()` block, on 32 sets of 4 096 held-out prompts, $W_N$ on
# another query has a mean error of 1.51 (1.4 to 1.7 from set to set) against zero's 2.0,
# still about 16.5 times (14 to 19 from set to set) its error on its own query (0.09). The
# implicit weights serve the query they were built for.

# %% [markdown]
# ## Where the analogy stops
#
# | | explicit GD on the demonstrations | implicit dynamics (Prop. 3.1) |
# |---|---|---|
# | objective | a data-fit loss, with a minimiser | a new *linear* $L_i$ per token, no minimiser |
# | labels $y_j$ | in the loss | only through the attention output |
# | step size | $\eta$, chosen by the learner | $\eta_x = 1/\|A(x)\|^2$, fixed by the query |
# | result | one $\theta$ for all queries | a rank-1 $W_N - W_0$ per query |
# | order of demonstrations | full-batch GD: no effect; online SGD: changes path and endpoint | changes the path; the endpoint of one block without positions is order-free |
# | task error | full-batch GD lowers its data-fit loss at every small enough step; the query error falls on average (online SGD: a quarter of its steps raise it, exercise 4) | falls only on average, and only after training; about half of the steps raise it |
#
# The proposition is an exact *description* of how one block uses its context; it is not a
# claim that the block optimises anything. What training buys is that this description,
# walked token by token, lowers the task error on average.

# %% [markdown]
# ## Summary
#
# - Order: $W_N$ depends on the context only through $A(C, x)$, so $\mathrm{spread}_N \approx 10^{-16}$, while $\mathrm{spread}_i = \frac1B\sum_b \operatorname{std}_r T_{W_i}(x_b) > 0$ for $i < N$; online SGD's endpoint spreads, full-batch GD's does not.
# - $L_i(W) = \operatorname{trace}(G_i^\top W)$ is linear: $L_i(W - sG_i) = L_i(W) - s\|G_i\|_F^2$ for every $s$, no minimiser unless $G_i = 0$.
# - After training $\frac1B\sum_b e_{b,N} \ll \frac1B\sum_b e_{b,0}$, yet $e_{b,i+1} > e_{b,i}$ for about half of the single steps.
# - $W_N - W_0 = W_0\,\Delta A\, A(x)^\top/\|A(x)\|^2$ serves its own query $x$ only.

# %% [markdown]
# ## Exercises
#
# 1. *(derivation)* Why has $L_i(W) = \operatorname{trace}(G_i^\top W)$ no minimiser? When does
#    it have one, and what does the path do then? Why does the step of size $\eta_x$ still land
#    exactly on $W_{i+1}$?
# 2. *(prediction, then code)* Predict what a causal mask does to the order invariance of the
#    query's output (for one block, the invariance of the endpoint $W_N$), for one block and
#    for a stack of two blocks. Test it on random models: compare the query's output for
#    the original and a shuffled context.
# 3. *(derivation)* Show that full-batch GD's iterates do not depend on the order of the pairs.
#    For online SGD from $\theta_0 = 0$ on two pairs, compute the difference between the orders
#    $(1, 2)$ and $(2, 1)$. When does it vanish, and how does it scale with $\eta$?
# 4. *(extension)* Is "better with every demonstration" true of an explicit learner? Compute
#    the fraction of single steps that raise the query error for online SGD ($\eta = 0.1$) on
#    the same prompts, and its mean error at $i = 0$, $1$ and $N$.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** $L_i$ is linear: $L_i(W - sG_i) = L_i(W) - s\|G_i\|_F^2 \to -\infty$ as
# $s \to \infty$ whenever $G_i \neq 0$, so it is unbounded below and has no minimiser. It has
# one only when $G_i = W_0 (A_i - A_{i+1}) A(x)^\top = 0$, i.e. when token $c_{i+1}$ leaves
# $W_0 A$ unchanged; then $L_i \equiv 0$, every $W$ is a minimiser, and the path does not
# move ($W_{i+1} = W_i$). The step lands on $W_{i+1}$ because $\eta_x$ is not chosen by
# descent at all: $-\eta_x G_i = W_0(A_{i+1} - A_i)A(x)^\top/\|A(x)\|^2 = \Delta W_{i+1} - \Delta W_i$
# is the increment of the patch, rewritten as a gradient step.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 2.** One block: nothing changes at the query. It is the last token, so even with
# a causal mask it attends to every context token, and without positions its output is a
# permutation-invariant sum over them. Two blocks: the invariance breaks. With the mask,
# context token $c_j$'s first-block output depends on the tokens before it, so the keys and
# values the query sees in the second block depend on the order. Without the mask every
# token sees the whole (unordered) context, and the stack stays order-free.

# %% jupyter={"source_hidden": true}
small = regression_prompts(64, n_context=20, d=2, seed=3)
shuffle = numpy.random.default_rng(5).permutation(20)
shuffled_tokens = numpy.concatenate([small.context[:, shuffle], small.query[:, None]], axis=1)
order_gap = {}
for n_blocks in (1, 2):
    for causal in (False, True):
        c = TransformerConfig(d_token=3, n_blocks=n_blocks, n_heads=2, d_head=4, d_mlp=16,
                              causal=causal)
        p = init_params(c, seed=1)
        original = forward(p, c, small.tokens, last_only=True)[0][:, -1]
        permuted = forward(p, c, shuffled_tokens, last_only=True)[0][:, -1]
        order_gap[(n_blocks, causal)] = relative_residual(original, permuted)
        print(f"{n_blocks} block(s), causal = {causal!s:5}:"
              f" relative change {order_gap[(n_blocks, causal)]:.1e}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 3.** Full-batch GD's update uses $\sum_j (\theta x_j - y_j) x_j^\top$, a sum,
# which does not change when the pairs are permuted; by induction every iterate is order-free
# (up to the rounding of the sum, $10^{-16}$). Online SGD from 0: after $(1, 2)$,
# $\theta = \eta y_1 x_1^\top + \eta y_2 x_2^\top - \eta^2 y_1 (x_1^\top x_2)\, x_2^\top$; after
# $(2, 1)$ the last term is $-\eta^2 y_2 (x_1^\top x_2)\, x_1^\top$. The difference is
# $\eta^2 (x_1^\top x_2)(y_2 x_1 - y_1 x_2)^\top$: zero when $x_1 \perp x_2$ or when
# $y_2 x_1 = y_1 x_2$ ($x_2 \parallel x_1$ with consistent labels, always so for noiseless
# pairs with parallel inputs), and of order $\eta^2$, so small steps make SGD nearly
# order-free (it approaches the gradient flow, which sees the sum).

# %% jupyter={"source_hidden": true}
sgd_errors = (sgd_predictions[0] - batch.target[:, None]) ** 2
sgd_mean = sgd_errors.mean(axis=0)
print(f"online SGD (η = 0.1): {100 * rising_fraction(sgd_errors):.1f} % of single steps raise"
      f" the error; mean error i = 0: {sgd_mean[0]:.2f}, i = 1: {sgd_mean[1]:.2f},"
      f" i = {N}: {sgd_mean[N]:.1e}; the mean falls at every step:"
      f" {bool(numpy.all(numpy.diff(sgd_mean) < 0))}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 4.** No learner can promise it: a single demonstration can point away from
# $w$ as seen from the query. Online SGD raises the query error on about a quarter of its
# steps (printed above) while its mean error falls at every step, the first included: its
# small step $\eta = 0.1$ moves cautiously, whereas the trained block's first step
# raises the mean error, although one demonstration is enough to lower it (section 3).

# %% [markdown]
# ## Checks

# %%
assert spread_implicit[N] <= IDENTITY_RTOL  # order-free endpoint ...
assert spread_implicit[N - 1] > 1e-3 and spread_implicit[N // 2] > 1e-3  # ... path that is not
assert max(endpoint_residuals) <= IDENTITY_RTOL and min(midpoint_gaps) > 1e-3
assert spread_sgd[N] > 1e-3 and spread_full_batch <= IDENTITY_RTOL  # online vs full batch
assert residual_linear <= IDENTITY_RTOL and drop_residual <= IDENTITY_RTOL
assert 0.3 < rising["trained"] < 0.6  # about half of the single steps raise the error ...
assert mean_error["trained"][1] > mean_error["trained"][0]  # ... the first one on average too
assert mean_error["trained"][N] < 0.5 * mean_error["trained"][0]  # the trend falls
assert mean_error["random weights"][N] > 0.8 * mean_error["random weights"][0]  # random: no
assert order_gap[(1, True)] <= IDENTITY_RTOL and order_gap[(2, False)] <= IDENTITY_RTOL
assert order_gap[(2, True)] > 1e-3  # a causal stack is order-sensitive
assert borrowed > 2 * own  # the implicit weights do not transfer to another query ...
assert borrowed > zero_other  # ... here not even as well as predicting zero
