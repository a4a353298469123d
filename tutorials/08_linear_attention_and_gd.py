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
# # 8. Linear attention and gradient descent in a forward pass
#
# The implicit update of Dherin et al. (2025, arXiv:2507.16003) holds for any contextual
# layer. With **linear attention** everything is explicit, and the picture meets an older line
# of work: transformers that *run* gradient descent in their forward pass.
#
# **The patch in closed form.** For un-normalised linear attention the query's output is a sum
# over tokens, so the context vector of a set $Y$ of tokens is exactly
#
# $$
# \delta A_x(Y) = \Big(\sum_{y \in Y} v_y k_y^\top\Big)\, q_x
# \qquad\Longrightarrow\qquad
# \Delta W(Y) = \frac{W\,\big(\sum_{y\in Y} v_y k_y^\top\big)\, q_x\; A(C\setminus Y, x)^\top}{\|A(C\setminus Y, x)\|^2}
# $$
#
# (per head, with $W_O$ and the $1/\sqrt{K}$ of the scores): the "dual form" of Dai et al. (2023),
# here exact. The memory matrix $\sum v k^\top$ does not depend on the query, and
# $\delta A_x$ is additive over disjoint sets of tokens.
#
# **The von Oswald construction** (von Oswald et al. 2023, ICML, Proposition 1). With tokens
# $e_i = (x_i; y_i)$, one linear self-attention layer with
# $W_K = W_Q = \begin{pmatrix} I_d & 0\\ 0 & 0\end{pmatrix}$,
# $W_V = \begin{pmatrix} 0 & 0\\ W_0 & -1\end{pmatrix}$ and $P = \frac{\eta}{n} I$,
# $e_q \leftarrow e_q + P \sum_i W_V e_i (W_K e_i)^\top W_Q e_q$, writes $-W_1 x_q$ into the
# query's $y$-slot, where $W_1 = W_0 - \eta \nabla L(W_0)$ is one gradient step on
# $L(W) = \frac{1}{2n}\sum_i \|W x_i - y_i\|^2$ (take $W_0 = 0$, $y_q = 0$).
#
# **The best single step** (Zhang, Frei & Bartlett 2024, JMLR, with $\Lambda = I$): for
# $x, w \sim \mathcal{N}(0, I_d)$ the expected error of one step from $W_0 = 0$,
# $\mathbb{E}(\hat y - \langle w, x_q\rangle)^2 = d\,[\eta^2 (1 + \tfrac{d+1}{n}) - 2\eta + 1]$, is
# minimised at
#
# $$ \eta^* = \frac{1}{1 + (d+1)/n}. $$
#
# **What we will check**: the closed-form $\delta A$ against `implicit_update` on a linear
# attention block, and its additivity (`IDENTITY_RTOL`); the von Oswald layer against an
# explicit gradient step (`IDENTITY_RTOL`), also from a non-zero $W_0$; the implicit update of a
# read-out after that layer; and $\eta^*$ by a sweep over $\eta$ on 100 000 prompts.

# %%
import matplotlib.pyplot as plt
import numpy

from minimal_icl import (
    IDENTITY_RTOL,
    BlockParams,
    MLPParams,
    ModelParams,
    TransformerConfig,
    init_params,
    relative_residual,
)
from minimal_icl.data import (
    mse,
    one_step_gd_mse,
    one_step_gd_predict,
    optimal_gd_step,
    prompt_tokens,
    regression_prompts,
)
from minimal_icl.implicit import implicit_update, linear_attention_context_vector
from minimal_icl.von_oswald import von_oswald_model, von_oswald_predict

# %% [markdown]
# ## The patch of a linear-attention block, in closed form

# %%
config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=32,
                           attention="linear", activation="relu")
params = init_params(config, seed=0)
attn = params.blocks[0].attn
batch = regression_prompts(32, n_context=16, d=2, seed=1)
context, query = batch.context, batch.query

(update,) = implicit_update(params, config, context, query)  # Y = C
closed_form = linear_attention_context_vector(attn, config.n_heads, context, query)
residual_closed_form = relative_residual(update.delta_u, closed_form)

first, rest = list(range(0, 6)), list(range(6, 16))
delta_first = linear_attention_context_vector(attn, config.n_heads, context[:, first], query)
delta_rest = linear_attention_context_vector(attn, config.n_heads, context[:, rest], query)
residual_additive = relative_residual(delta_first + delta_rest, closed_form)
(partial,) = implicit_update(params, config, context, query, removed=first)
residual_partial = relative_residual(partial.delta_u, delta_first)
print(f"δA from implicit_update vs (Σ v kᵀ) q:       {residual_closed_form:.1e}")
print(f"δA(c_1..c_6) + δA(c_7..c_16) vs δA(C):        {residual_additive:.1e}")
print(f"Y = c_1..c_6: implicit_update vs closed form: {residual_partial:.1e}")

# %% [markdown]
# ## One linear attention layer = one step of gradient descent
#
# `von_oswald_predict` runs the construction as a one-block model of this package (linear
# attention, attention skip, an all-zero MLP with a skip) and reads $\hat y$ from the
# query's $y$-slot; `one_step_gd_predict` takes the explicit step.

# %%
d, n = 2, 16
gd_batch = regression_prompts(64, n_context=n, d=d, seed=2)
cx, cy, qx = gd_batch.context_x, gd_batch.context_y, gd_batch.query_x
vo_residuals = {}
for label, W0 in (("W0 = 0", None), ("W0 = (0.5, −1)", numpy.array([0.5, -1.0]))):
    for eta in (0.1, 0.5, 1.0):
        layer = von_oswald_predict(gd_batch.tokens, eta, W0)
        explicit = one_step_gd_predict(gd_batch, eta, W0)
        vo_residuals[(label, eta)] = relative_residual(layer, explicit)
for key, value in vo_residuals.items():
    print(f"{key[0]:16s} η = {key[1]:.1f}: layer vs explicit step {value:.1e}")

# %% [markdown]
# ## The implicit update of a read-out after the von Oswald layer
#
# Put an MLP after the layer whose first weight reads minus the $y$-slot,
# $W = (0, \dots, 0, -1)$. With $W_0 = 0$ the query's own value vanishes, so $A(x) = 0$, the MLP
# input without context is $u_\emptyset = e_q = (x_q; 0)$, and the context vector is the whole
# attention output $\delta u = (0; -W_1 x_q)$. Theorem 2.2 then gives
#
# $$ \Delta W = \frac{(W\delta u)\, e_q^\top}{\|e_q\|^2} = \Big(\frac{(W_1 x_q)\, x_q^\top}{\|x_q\|^2},\; 0\Big), $$
#
# the gradient-descent weights projected on the query direction: the minimum-norm matrix that
# agrees with the explicit step $W_1$ *at this query*.

# %%
eta = 0.5
vo_config, vo_params = von_oswald_model(d, eta, n)
readout = numpy.zeros((1, d + 1))
readout[0, d] = -1.0
readout_config = TransformerConfig(**{**vo_config.to_dict(), "d_mlp": 1, "mlp_skip": False})
readout_params = ModelParams(blocks=(BlockParams(
    attn=vo_params.blocks[0].attn,
    mlp=MLPParams(W1=readout, b1=numpy.zeros(1), W2=numpy.zeros((d + 1, 1)), b2=numpy.zeros(d + 1)),
    ln1=None, ln2=None),))
vo_tokens = prompt_tokens(cx, cy, qx)
(readout_update,) = implicit_update(readout_params, readout_config, vo_tokens[:, :-1], vo_tokens[:, -1])
W1_explicit = eta * numpy.mean(cy[:, :, None] * cx, axis=1)  # (B, d): W_1 = η (1/n) Σ y_i x_iᵀ
projected = (numpy.sum(W1_explicit * qx, axis=1)[:, None] * qx) / numpy.sum(qx * qx, axis=1)[:, None]
expected = numpy.concatenate([projected, numpy.zeros((len(qx), 1))], axis=1)[:, None, :]  # (B, 1, D)
residual_readout = relative_residual(readout_update.delta_W, expected)
print(f"ΔW of the read-out vs (W_1 x_q) x_qᵀ/‖x_q‖²: {residual_readout:.1e}")

# %% [markdown]
# ## The best single step: $\eta^* = 1/(1 + (d+1)/n)$
#
# Sweep $\eta$ for $d = 5$, $n = 10$ (where $\eta^* = 0.625$ is far from 1), on 100 000 prompts.
# The error is quadratic in $\eta$, so its empirical minimiser is
# $\hat\eta = \sum_b p_b y_b / \sum_b p_b^2$ with $p_b$ the prediction at $\eta = 1$.

# %%
d_sweep, n_sweep = 5, 10
sweep = regression_prompts(100_000, n_context=n_sweep, d=d_sweep, seed=4)
etas = numpy.linspace(0.0, 1.4, 29)
measured = [mse(one_step_gd_predict(sweep, float(e)), sweep.target) for e in etas]
theory = [one_step_gd_mse(d_sweep, n_sweep, float(e)) for e in etas]
p_unit = one_step_gd_predict(sweep, 1.0)
eta_hat = float(numpy.sum(p_unit * sweep.target) / numpy.sum(p_unit * p_unit))
eta_star = optimal_gd_step(d_sweep, n_sweep)
curve_gap = relative_residual(numpy.array(measured), numpy.array(theory))
print(f"η* = {eta_star:.4f}, measured minimiser η̂ = {eta_hat:.4f}; "
      f"measured vs expected error curve: relative gap {curve_gap:.1e}")

fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
ax.plot(etas, measured, "o", ms=4, label="measured (100 000 prompts)")
ax.plot(etas, theory, "-", label=r"$d\,[\eta^2(1+\frac{d+1}{n}) - 2\eta + 1]$")
ax.axvline(eta_star, color="tab:red", ls="--", lw=0.8, label=rf"$\eta^* = {eta_star:.3f}$")
ax.axvline(1.0, color="gray", ls=":", lw=0.8, label=r"$\eta = 1$")
ax.set_xlabel(r"step size $\eta$")
ax.set_ylabel("mean squared error at the query")
ax.set_title(f"one GD step, d = {d_sweep}, n = {n_sweep}")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# A trained linear-attention layer does not have to discover $\eta = 1$: the optimal
# single step shrinks the naive one by the factor $1/(1 + (d+1)/n)$, which is what Zhang, Frei
# & Bartlett find a trained layer converges to. For the paper's setting ($d = 2$, $n = 50$)
# $\eta^* = 0.943$.
#
# ## Exercise
#
# With label noise $\sigma$ (`regression_prompts(..., noise=σ)`) the best step changes. Sweep
# $\eta$ again for $\sigma = 1$ and compare $\hat\eta$ with $\eta^*$. Which way does it move, and
# why?
#
# The solution is folded away below (click to open it).

# %% [markdown] jupyter={"source_hidden": true}
# **Solution.** The noise leaves $\mathbb{E}[p\,y] = d$ unchanged but adds
# $\sigma^2 d/n$ to $\mathbb{E}[p^2]$, so the best step shrinks to
# $\eta^*_\sigma = 1/(1 + (d+1)/n + \sigma^2/n)$: with noisy labels a cautious step averages
# the noise less aggressively into the prediction.

# %% jupyter={"source_hidden": true}
sigma = 1.0
noisy = regression_prompts(100_000, n_context=n_sweep, d=d_sweep, seed=5, noise=sigma)
p_noisy = one_step_gd_predict(noisy, 1.0)
eta_noisy = float(numpy.sum(p_noisy * noisy.target) / numpy.sum(p_noisy * p_noisy))
print(f"σ = {sigma}: measured η̂ = {eta_noisy:.4f}, "
      f"1/(1 + (d+1)/n + σ²/n) = {1 / (1 + (d_sweep + 1) / n_sweep + sigma**2 / n_sweep):.4f}, "
      f"noiseless η* = {eta_star:.4f}")

# %% [markdown]
# ## Checks

# %%
assert residual_closed_form <= IDENTITY_RTOL
assert residual_additive <= IDENTITY_RTOL
assert residual_partial <= IDENTITY_RTOL
assert max(vo_residuals.values()) <= IDENTITY_RTOL
assert residual_readout <= IDENTITY_RTOL
assert abs(optimal_gd_step(2, 50) - 1 / (1 + 3 / 50)) <= IDENTITY_RTOL
assert abs(eta_hat - eta_star) <= 0.02  # ~10 standard errors for 100 000 prompts
assert curve_gap <= 0.02
assert etas[int(numpy.argmin(measured))] == etas[int(numpy.argmin(numpy.abs(etas - eta_star)))]
