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
# # 6. The experiment: training, two validation curves, convergence
#
# Section 4 of Dherin et al. (2025, arXiv:2507.16003, v1) checks Theorem 2.2 and
# Proposition 3.1 on a transformer trained for **in-context linear regression**:
#
# * each prompt has its own task $w \sim \mathcal{N}(0, I_d)$, $d = 2$, and $n = 50$ pairs
#   $(x_i, y_i = \langle w, x_i\rangle)$ with $x_i \sim \mathcal{N}(0, I_d)$, then a query $x$;
#   the tokens are the columns of
#   $E = \begin{pmatrix} x_1 & \cdots & x_n & x\\ y_1 & \cdots & y_n & 0\end{pmatrix} \in \mathbb{R}^{3\times 51}$;
# * the model is **one block** — softmax self-attention, then an MLP, no skip connections, no
#   LayerNorm — and its prediction is the last coordinate of its output at the query.
#
# **Figure 2** trains it and computes the validation loss two ways, with the prompt,
# $T_W(C, x)$, and with the query alone and the patch, $T_{W + \Delta W}(x)$; by the corollary of
# Theorem 2.2 the curves must overlap at every step, and the prediction difference over a grid
# of queries must be at rounding level (the paper reports about $10^{-7}$ in float32).
# **Figure 3** plots the implicit step $\|\Delta W_{i+1} - \Delta W_i\|_F$ against the context
# length $i$ for the trained model (Proposition 3.1's path).
#
# The paper does not publish its width, heads, optimiser or number of steps; the package's
# choices are in `minimal_icl.train.paper_setting` (printed below). This tutorial runs the
# package's own experiment code, `minimal_icl.experiments.identity` and
# `minimal_icl.experiments.convergence` — the code behind `make reproduce` — on a shorter
# training run.
#
# **What we will check**: the two validation curves agree to `IDENTITY_RTOL` at every
# validation step; the grid differences are at rounding level in float64 (`IDENTITY_RTOL`) and
# float32 (`FLOAT32_RTOL`); the trained model beats predicting zero; and the convergence slopes,
# **read against the controls** of tutorial 5 (random softmax weights decay like $1/i$ too;
# random linear attention does not decay).

# %%
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy
from IPython.display import Image, display

from minimal_icl import FLOAT32_RTOL, IDENTITY_RTOL, relative_residual
from minimal_icl.experiments import convergence, identity
from minimal_icl.experiments.models import TrainedModel, train_with_patched_validation
from minimal_icl.train import paper_setting

FAST = os.environ.get("MINIMAL_ICL_FAST") == "1"  # the test suite's short run
SEED = 0
figures = Path(tempfile.mkdtemp(prefix="minimal_icl_tutorial_06_"))

print(paper_setting.__doc__)

# %% [markdown]
# ## Training, with the validation loss computed two ways
#
# `train_with_patched_validation` runs the package's training loop (`train.train_setup`: forward,
# loss at the query, handwritten backward, Adam) with a callback that receives the parameters and,
# at every validation step, evaluates the held-out prompts both ways. The full paper setting is
# 20 000 steps (`make reproduce`); here
# 4 000 steps (300 in the test suite's fast mode).

# %%
if FAST:
    setup = paper_setting(fast=True)
else:
    setup = replace(paper_setting(), steps=4000, val_every=250, val_size=1024)
params, history = train_with_patched_validation(setup, SEED)
model = TrainedModel(params=params, setup=setup, seed=SEED, history=history,
                     path=figures / "paper_model.npz", reused=False)
curve_residual = relative_residual(history["val_loss"], history["val_loss_patched"])
print(f"{setup.steps} steps; held-out MSE {history['val_loss'][0]:.3f} -> {history['val_loss'][-1]:.3f}")
print(f"the two validation curves: relative residual {curve_residual:.1e} over "
      f"{len(history['val_step'])} validation steps")

# %% [markdown]
# ## Figure 2
#
# `identity.compute` adds the grid of queries $x = (x_1, x_2) \in [-3, 3]^2$: for each held-out
# context it compares $T_W(C, x)$ and $T_{W+\Delta W}(x)$ at every grid point, in float64 and with
# the model and data cast to float32. The query $x = 0$ is left out: there $A(x) = W_O W_V 0 = 0$
# and no update exists (tutorial 3).

# %%
record = identity.compute(model, identity.identity_config(fast=FAST), SEED)
identity.plot(record, figures / "identity.png")
display(Image(filename=str(figures / "identity.png")))
head = record["headline"]
for name in ("float64", "float32"):
    print(f"{name}: max |difference| {head[f'max_abs_difference_{name}']:.1e}, relative to the "
          f"predictions {head[f'max_relative_difference_{name}']:.1e}")

# %% [markdown]
# Panel (a) and (b): the curves overlap exactly, at every step of training — the identity does
# not need a trained model. Panels (c) and (d): the differences are rounding errors; float32 sits
# near the paper's $10^{-7}$, float64 near $10^{-15}$.
#
# How good is the model itself? The same record compares it with the baselines on 10 000 new
# prompts (2 000 in fast mode): predicting 0, one step of gradient descent with the optimal step
# $\eta^* = 1/(1 + (d+1)/n)$ (tutorial 8), and least squares, which is exact for noiseless labels.

# %%
for name, mse_value in head["heldout_mse"].items():
    print(f"{name:28s} MSE {mse_value:.3g} ± {head['heldout_se'][name]:.1g}")

# %% [markdown]
# After 4 000 steps the one-block model is about as good as one step of gradient descent with
# the optimal step size, and far from least squares — the picture of von Oswald et al. (2023)
# and Zhang, Frei & Bartlett (2024) for one attention layer.
#
# ## Figure 3, with its controls
#
# `convergence.compute` measures the implicit step sizes along Proposition 3.1's path for the
# trained model and, as controls the paper does not show, for the same architecture with random
# weights and for random linear attention (tutorial 5 explains why these matter).

# %%
conv = convergence.compute(model, convergence.convergence_config(fast=FAST), SEED)
convergence.plot(conv, figures / "convergence.png")
display(Image(filename=str(figures / "convergence.png")))
slopes = {key: curve["slope"] for key, curve in conv["data"]["curves"].items()}
print({key: round(value, 2) for key, value in slopes.items()})

# %% [markdown]
# The trained model's steps do shrink, with a log-log slope near $-1$ — but so do those of the
# untrained softmax block, while untrained linear attention does not shrink at all. The decay
# in Figure 3 is, to first order, the $1/(i+1)$ weight that softmax gives each new token; what
# training changes is the *direction* of the steps (tutorial 9: the trained path lowers the task
# error, the random one does not), not their decay.
#
# ## Exercise
#
# Retrain with `attention="linear"` in the config (use
# `replace(setup, config=replace(setup.config, attention="linear"))` and a smaller learning
# rate) and look at Figure 3 again. Do the trained linear-attention steps decay?
#
# The solution is folded away below (click to open it).

# %% jupyter={"source_hidden": true}
# Solution: a trained linear-attention block keeps taking steps of the same size (slope ≈ 0),
# and it fits worse than the softmax block in as many steps.
from minimal_icl.data import regression_prompts
from minimal_icl.experiments.common import loglog_slope
from minimal_icl.train import train_setup

linear_setup = replace(paper_setting(fast=True), steps=500,
                       config=replace(setup.config, attention="linear"),
                       optimizer=replace(setup.optimizer, lr=1e-3))
linear_model = train_setup(linear_setup, seed=SEED)
tasks = regression_prompts(100, setup.n_context, setup.d, seed=1)
norms = convergence.step_norms(linear_model.params, linear_setup.config, tasks.context, tasks.query)
i = numpy.arange(1, setup.n_context)
print(f"trained linear attention: held-out MSE {linear_model.history.val_loss[-1]:.2f}, "
      f"log-log slope of the steps {loglog_slope(i[4:], numpy.mean(norms[:, 1:], axis=0)[4:]):.2f}")

# %% [markdown]
# ## Checks

# %%
assert curve_residual <= IDENTITY_RTOL  # Figure 2 (a, b): the curves overlap
assert head["max_relative_difference_float64"] <= IDENTITY_RTOL  # Figure 2 (c)
assert head["max_relative_difference_float32"] <= FLOAT32_RTOL  # Figure 2 (d)
assert history["val_loss"][-1] < 0.5 * head["heldout_mse"]["zero"]  # it learned
assert -1.3 <= slopes["trained_softmax"] <= -0.6
assert -1.3 <= slopes["random_softmax"] <= -0.6  # the control decays too
assert abs(slopes["random_linear"]) <= 0.2  # linear attention does not
assert numpy.all(numpy.isfinite(history["train_loss"]))
