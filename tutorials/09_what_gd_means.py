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
# # 9. What "gradient descent" means here
#
# Proposition 3.1 of Dherin et al. (2025, arXiv:2507.16003, v1) writes the token-by-token
# implicit weights as gradient steps,
#
# $$
# W_{i+1} = W_i - h\,\nabla_W L_i(W_i),\qquad L_i(W) = \operatorname{trace}(\Delta_i^\top W),\qquad
# h = 1/\|A(x)\|^2 .
# $$
#
# The statement is exact (tutorial 5 checks it to $10^{-15}$). This tutorial asks what kind of
# gradient descent it is, by comparing it with the gradient descent of a learner that fits the
# demonstrations.
#
# 1. **Order.** The path $W_1, W_2, \dots$ depends on the order of the demonstrations; the
#    endpoint $W_n$ does not: it depends only on $A(C, x)$, which one attention layer without
#    positional information computes permutation-invariantly. Online SGD on the
#    demonstrations is the opposite: its endpoint depends on the order. (Shen, Mishra &
#    Khashabi 2024, ICML, compare in-context learning and gradient descent along such lines,
#    order sensitivity included.)
# 2. **The losses.** Each $L_i$ is *linear* in $W$: its gradient $\Delta_i$ is the same at every
#    $W$, it is unbounded below, and it has no minimiser. A step of size $h$ lowers it by
#    exactly $h\|\Delta_i\|_F^2$. No target $y$ appears in $L_i$: labels enter only through the
#    attention output. "Gradient descent" here is a rewriting of the increments, not the
#    optimisation of a task loss.
# 3. **Does the path learn?** The implicit path exists for any weights. Whether walking it
#    lowers the task error is a property of *training*: a random block walks it without getting
#    better; a trained one gets better with every demonstration.
# 4. **One query at a time.** The implicit weights are built for one query; explicit gradient
#    descent produces one weight for every query.
#
# **What we will check**: same endpoint for permuted contexts (`IDENTITY_RTOL`) but different
# paths; online SGD endpoints that differ; the linearity of $L_i$ along a line
# (`IDENTITY_RTOL`); the task error along the path for a random and a trained block; and the
# query-specificity of $W_n$.

# %%
import os
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy

from minimal_icl import IDENTITY_RTOL, forward, init_params, relative_residual
from minimal_icl.data import mse, regression_prompts
from minimal_icl.dynamics import implicit_path
from minimal_icl.train import paper_setting, train_setup

FAST = os.environ.get("MINIMAL_ICL_FAST") == "1"  # the test suite's short run

setup = paper_setting(fast=True)  # the paper's block: N = 50, d = 2, softmax, no skips
config, N = setup.config, setup.n_context
random_params = init_params(config, seed=0)
batch = regression_prompts(256, n_context=N, d=setup.d, seed=7)
context, query = batch.context, batch.query
query_alone = query[:, None, :]

# %% [markdown]
# ## 1. Order: the path depends on it, the endpoint does not

# %%
rng = numpy.random.default_rng(0)
path = implicit_path(random_params, config, context, query)
endpoint_residuals, midpoint_gaps, shuffled_predictions = [], [], []
for _ in range(8):
    order = rng.permutation(N)
    shuffled = implicit_path(random_params, config, context[:, order], query)
    endpoint_residuals.append(relative_residual(shuffled.weights(N), path.weights(N)))
    midpoint_gaps.append(relative_residual(shuffled.weights(N // 2), path.weights(N // 2)))
    shuffled_predictions.append([  # T_{W_i}(x) for prompt 0, i = 0..N
        forward(random_params, config, query_alone, patches=shuffled.patch(i))[0][0, -1, -1]
        for i in range(N + 1)])
print(f"endpoints W_N over 8 orders:   largest relative difference {max(endpoint_residuals):.1e}")
print(f"midpoints W_25 over 8 orders:  smallest relative difference {min(midpoint_gaps):.1e}")

# %% [markdown]
# Online SGD on the same demonstrations, $w \leftarrow w - \eta\,(\langle w, x_i\rangle - y_i)\,x_i$
# one pair at a time from $w = 0$, ends at an order-dependent $w$:

# %%
def online_sgd(x, y, eta=0.1):
    """One pass of SGD on ½(⟨w, x_i⟩ − y_i)², in the given order; returns w (B, d)."""
    w = numpy.zeros((x.shape[0], x.shape[2]))
    for i in range(x.shape[1]):
        residual = numpy.sum(w * x[:, i], axis=1) - y[:, i]  # (B,)
        w = w - eta * residual[:, None] * x[:, i]
    return w


sgd_endpoints = []
for _ in range(8):
    order = rng.permutation(N)
    sgd_endpoints.append(online_sgd(batch.context_x[:, order], batch.context_y[:, order]))
sgd_spread = relative_residual(sgd_endpoints[0], sgd_endpoints[1])
print(f"online SGD endpoints of two orders: relative difference {sgd_spread:.1e}")

fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
for k, trace in enumerate(shuffled_predictions):
    ax.plot(range(N + 1), trace, lw=1, label="8 random orders" if k == 0 else None, color="tab:blue",
            alpha=0.6)
ax.scatter([N], [shuffled_predictions[0][-1]], color="k", zorder=3, label="the common endpoint")
ax.set_xlabel("tokens consumed i")
ax.set_ylabel(r"$T_{W_i}(x)$, prompt 0")
ax.set_title("different paths, one endpoint")
ax.legend()
plt.show()

# %% [markdown]
# ## 2. The losses $L_i$ are linear and have no minimiser
#
# Walk from $W_i$ along the negative gradient, $W_i - s\,\Delta_i$. For a data-fit loss the value
# would bottom out at a minimiser; $L_i$ falls on a straight line forever, and the proposition's
# step $s = h$ is just one point on it.

# %%
i = 10
W_i = path.weights(i)
gradient = path.gradient(i)  # Δ_i: no W argument, it is the same everywhere
s_values = numpy.linspace(0, 5, 11) * path.step_size[0]
along = numpy.array([path.loss(i, W_i - s * gradient)[0] for s in s_values])
line = path.loss(i, W_i)[0] - s_values * numpy.sum(gradient[0] ** 2)
residual_linear = relative_residual(along, line)
at_step = path.loss(i, path.weights(i + 1))[0]
drop_residual = relative_residual(numpy.array(path.loss(i, W_i)[0] - at_step),
                                  numpy.array(path.step_size[0] * numpy.sum(gradient[0] ** 2)))
print(f"L_10 along the line vs a straight line: {residual_linear:.1e}; "
      f"drop at s = h vs h‖Δ‖²: {drop_residual:.1e}")

fig, ax = plt.subplots(figsize=(5, 3.4), constrained_layout=True)
ax.plot(s_values / path.step_size[0], along, "o-", ms=4)
ax.axvline(1.0, color="tab:red", ls="--", lw=0.8, label="the step of Prop. 3.1 (s = h)")
ax.set_xlabel("s / h")
ax.set_ylabel(r"$L_{10}(W_{10} - s\,\Delta_{10})$")
ax.set_title("a linear 'loss': no bottom")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Does walking the path lower the task error?
#
# Measure the squared error of $T_{W_i}(x)$ against the target $\langle w, x\rangle$ as the
# demonstrations are consumed, for the random block and for the same block after a short
# training run.

# %%
trained = train_setup(replace(setup, steps=300 if FAST else 1500), seed=0).params
checkpoints = list(range(0, N + 1, 5))
task_error = {}
for name, p in (("random weights", random_params), ("trained", trained)):
    p_path = implicit_path(p, config, context, query)
    task_error[name] = [mse(forward(p, config, query_alone, patches=p_path.patch(i))[0][:, -1, -1],
                            batch.target) for i in checkpoints]
    print(f"{name:15s} error at i = 0: {task_error[name][0]:.2f}, at i = {N}: {task_error[name][-1]:.2f}")

fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
for name, values in task_error.items():
    ax.plot(checkpoints, values, "o-", ms=4, label=name)
ax.set_xlabel("demonstrations consumed i")
ax.set_ylabel(r"MSE of $T_{W_i}(x)$")
ax.set_title("the same implicit dynamics, learning only after training")
ax.legend()
plt.show()

# %% [markdown]
# ## 4. The implicit weights serve one query
#
# Take $W_n$ built for one query and use it, without context, on a *different* query of the
# same task. Explicit gradient descent would give a weight that serves every query; the
# implicit one does not transfer.

# %%
trained_path = implicit_path(trained, config, context, query)
other = numpy.array(query)
other[:, :-1] = numpy.random.default_rng(1).standard_normal(other[:, :-1].shape)  # new x'
other_target = numpy.sum(batch.w * other[:, :-1], axis=1)
own = mse(forward(trained, config, query_alone, patches=trained_path.patch(N))[0][:, -1, -1],
          batch.target)
borrowed = mse(forward(trained, config, other[:, None, :], patches=trained_path.patch(N))[0][:, -1, -1],
               other_target)
with_context_other = mse(forward(trained, config, numpy.concatenate(
    [context, other[:, None, :]], axis=1), last_only=True)[0][:, -1, -1], other_target)
print(f"W_n on its own query:             MSE {own:.2f}")
print(f"W_n on another query, no context: MSE {borrowed:.2f}")
print(f"the model with context on it:     MSE {with_context_other:.2f}")

# %% [markdown]
# ## Where the analogy stops
#
# | | explicit GD on the demonstrations | implicit dynamics (Prop. 3.1) |
# |---|---|---|
# | objective | a data-fit loss, with a minimiser | a new *linear* $L_i$ per token, no minimiser |
# | labels $y_i$ | in the loss | only through the attention output |
# | step size | chosen by the learner | $1/\|A(x)\|^2$, fixed by the query |
# | result | one $W$ for all queries | a rank-1 $W_n - W_0$ per query |
# | order of demonstrations | changes the endpoint | changes the path, not the endpoint |
# | improves the task error | by construction | only if the weights were trained to |
#
# The proposition is an exact *description* of how one block uses its context; it is not a
# claim that the block optimises anything. What training buys is that this description,
# walked token by token, happens to lower the task error.

# %% [markdown]
# ## Checks

# %%
assert max(endpoint_residuals) <= IDENTITY_RTOL  # order-free endpoint
assert min(midpoint_gaps) > 1e-3  # order-dependent path
assert sgd_spread > 1e-3  # online SGD is order-dependent
assert residual_linear <= IDENTITY_RTOL and drop_residual <= IDENTITY_RTOL
assert task_error["trained"][-1] < 0.5 * task_error["trained"][0]  # trained: it learns in context
assert task_error["random weights"][-1] > 0.8 * task_error["random weights"][0]  # random: it does not
assert borrowed > 2 * own  # the implicit weights do not transfer to another query
