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
# # 8. Linear attention and gradient descent in a forward pass
#
# Symbols as in the [notation](../docs/notation.md) table.
#
# The implicit update of Dherin et al. (2025, arXiv:2507.16003) holds for any contextual
# layer. With **linear attention** everything is explicit, and the picture meets an older line
# of work: transformers that *run* gradient descent in their forward pass.
#
# **The patch in closed form.** Un-normalised linear attention weights each value by its
# scaled score, $P = S = q k^\top/\sqrt{K}$, so the query's output is a sum over the tokens
# it sees and the context vector of a set $Y$ of context tokens is exactly
#
# $$
# \delta A_x(Y) = W_O \operatorname{concat}_{\text{heads}}
#   \Big[\tfrac{1}{\sqrt K}\Big(\sum_{c \in Y} v_c\, k_c^{\top}\Big)\, q_x\Big],
# $$
#
# with $q_x$, $k_c$, $v_c$ the query, keys and values of one head (width $K$): one $K\times K$
# memory matrix $\sum v k^\top$ per head (the "dual form" of Dai et al. 2023, here exact).
# At the MLP input $\delta u = \delta A$ **only without LN2** (with an attention skip the
# query's own $z_x$ cancels from $u_C - u_\emptyset$); with LN2,
# $\delta u = \mathrm{LN2}(h_\emptyset + \delta A) - \mathrm{LN2}(h_\emptyset)$, not additive.
# Then $\Delta W(Y) = (W\,\delta u)\, a^\top/\|a\|^2$ with $a = u_\emptyset$.
#
# **The von Oswald construction** (von Oswald et al. 2023, ICML, Proposition 1). With tokens
# $e_j = (x_j; y_j)$, one linear self-attention layer
# $e_q \leftarrow e_q + W_P \sum_{j=1}^N W_V e_j\, (W_K e_j)^\top W_Q e_q$ with
# $W_K = W_Q = \begin{pmatrix} I_d & 0\\ 0 & 0\end{pmatrix}$,
# $W_V = \begin{pmatrix} 0 & 0\\ \theta_0 & -1\end{pmatrix}$, $W_P = \frac{\eta}{N} I$
# writes $-\theta_1 x_q$ into the query's $y$-slot (for $\theta_0 = 0$, $y_q = 0$), where
# $\theta_1 = \theta_0 - \eta \nabla L(\theta_0)$ is one gradient step on
# $L(\theta) = \frac{1}{2N}\sum_j (\theta x_j - y_j)^2$.
#
# **The best single step** (derived below; for $\Lambda = I$ it is where the trained linear
# attention of Zhang, Frei & Bartlett 2024, JMLR, converges): for
# $x, w \sim \mathcal{N}(0, I_d)$ the expected error of one step from $\theta_0 = 0$ is
# $d\,[\eta^2 (1 + \tfrac{d+1}{N}) - 2\eta + 1]$, minimised at
# $\eta^* = 1/(1 + (d+1)/N)$.
#
# **What we will check**: your closed form of $\delta A$ against `implicit_update`, its
# additivity, and where LN2 breaks it; your von Oswald weights against an explicit gradient
# step (`IDENTITY_RTOL`), also from $\theta_0 \neq 0$; the implicit update of a read-out after
# that layer; and $\eta^*$ by a sweep over $\eta$ on 100 000 prompts.

# %%
import math

import matplotlib.pyplot as plt
import numpy

from minimal_icl import (
    IDENTITY_RTOL,
    BlockParams,
    MLPParams,
    ModelParams,
    TransformerConfig,
    forward,
    init_params,
    relative_residual,
)
from minimal_icl.data import (
    mse,
    one_step_gd_mse,
    one_step_gd_predict,
    optimal_gd_step,
    regression_prompts,
)
from minimal_icl.exercises.tutorial_08 import (
    check_linear_attention_delta_A,
    check_von_oswald_weights,
)
from minimal_icl.implicit import implicit_update, linear_attention_context_vector
from minimal_icl.layernorm import layernorm_forward
from minimal_icl.von_oswald import von_oswald_attention, von_oswald_model, von_oswald_predict

# %% [markdown]
# ## 1. The patch of a linear-attention block, in closed form
#
# ### Your turn: $\delta A$ of linear attention
#
# Write the context vector of the removed tokens $Y$ for a linear-attention layer with
# weights `attn` (`W_Q`, `W_K`, `W_V` of shape $(HK, D)$, `W_O` of shape $(D, HK)$):
#
# $$
# q = W_Q x,\quad k_c = W_K c,\quad v_c = W_V c\quad (c \in Y),
# \qquad
# \delta A = W_O \operatorname{concat}_{\text{heads}}\Big[\tfrac{1}{\sqrt K}\Big(\sum_{c\in Y} v_c k_c^{\top}\Big) q\Big].
# $$
#
# $q$, $k_c$, $v_c$ are split into $H$ heads of width $K$ (`n_heads` is $H$, and
# $K = HK/H$). `removed_tokens` is $(B, |Y|, D)$, `query_token` is $(B, D)$; return $(B, D)$.
# Rows are tokens and each weight is (out, in), so $W_Q x$ is `query_token @ attn.W_Q.T`.
# Linear attention does not normalise: the sum over $Y$ has no $1/|Y|$.
# A head split is a reshape of the last axis, $(\dots, HK) \to (\dots, H, K)$: the first head
# owns features $0, \dots, K - 1$, the second $K, \dots, 2K - 1$, and so on.

# %%
def delta_A_linear(attn, n_heads, removed_tokens, query_token):
    """δA_x(Y) = W_O concat_heads[(Σ_c v_c k_cᵀ) q_x / √K] for linear attention, (B, D)."""
    B, n_removed, D = removed_tokens.shape
    ### BEGIN SOLUTION
    q = (query_token @ attn.W_Q.T).reshape(B, n_heads, -1)  # (B, H, K)
    k = (removed_tokens @ attn.W_K.T).reshape(B, n_removed, n_heads, -1)  # (B, |Y|, H, K)
    v = (removed_tokens @ attn.W_V.T).reshape(B, n_removed, n_heads, -1)  # (B, |Y|, H, K)
    K = q.shape[-1]
    memory = numpy.einsum("byhv,byhk->bhvk", v, k)  # (B, H, K, K): Σ_c v_c k_cᵀ
    heads = numpy.einsum("bhvk,bhk->bhv", memory, q) / math.sqrt(K)  # (B, H, K)
    delta_A = heads.reshape(B, -1) @ attn.W_O.T  # (B, D)
    ### END SOLUTION
    return delta_A


# %%
check_linear_attention_delta_A(delta_A_linear);

# %% [markdown]
# The check ran your function on a block with $H = 2$ heads of width $K = 3$ and compared it
# with `implicit_update`'s $\delta u = u_C - u_\emptyset$ for $Y$ = three of seven tokens.
# The package's `linear_attention_context_vector` computes the same thing. Because the memory
# is a sum over tokens, $\delta A$ is **additive** over disjoint sets,
# $\delta A(Y_1 \cup Y_2) = \delta A(Y_1) + \delta A(Y_2)$, which softmax attention is not
# (its normaliser couples every token):

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
print(f"Y = C:        δu of implicit_update vs closed form      {residual_closed_form:.1e}")
print(f"additivity:   δA(c_1..c_6) + δA(c_7..c_16) vs δA(C)      {residual_additive:.1e}")
print(f"Y = c_1..c_6: δu of implicit_update vs closed form      {residual_partial:.1e}")

# %% [markdown]
# **Where the closed form stops.** With pre-LayerNorm the attention reads
# $\mathrm{LN1}(z)$, so the closed form holds with $\mathrm{LN1}(c)$ for each removed token $c$
# and $\mathrm{LN1}(x)$ in place of $c$, $x$ (LN1 acts token by token), and it gives the change of the residual stream,
# $h_C - h_\emptyset = \delta A$. The MLP input is $u = \mathrm{LN2}(h)$, and
# $\delta u = \mathrm{LN2}(h_\emptyset + \delta A) - \mathrm{LN2}(h_\emptyset) \neq \delta A$:

# %%
ln_config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=32,
                              attention="linear", attn_skip=True, layer_norm=True)
ln_params = init_params(ln_config, seed=0)
ln_block = ln_params.blocks[0]
(ln_update,) = implicit_update(ln_params, ln_config, context, query)
ln_context, _ = layernorm_forward(context, ln_block.ln1, ln_config.ln_eps)  # LN1(c_j)
ln_query, _ = layernorm_forward(query[:, None, :], ln_block.ln1, ln_config.ln_eps)
ln_delta_A = linear_attention_context_vector(ln_block.attn, 2, ln_context, ln_query[:, 0])
_, with_context = forward(ln_params, ln_config, batch.tokens, last_only=True)
_, alone = forward(ln_params, ln_config, query[:, None, :])
delta_h = with_context.blocks[0].h[:, -1] - alone.blocks[0].h[:, -1]  # h_C − h_∅
residual_ln_h = relative_residual(delta_h, ln_delta_A)
gap_ln_u = relative_residual(ln_update.delta_u, ln_delta_A)
print(f"with LayerNorm: h_C − h_∅ vs closed form on LN1 tokens {residual_ln_h:.1e}")
print(f"                δu = u_C − u_∅ vs closed form          {gap_ln_u:.2f} (not equal)")
size_ratio = numpy.linalg.norm(ln_update.delta_u) / numpy.linalg.norm(ln_delta_A)
print(f"                ‖δu‖/‖δA‖ = {size_ratio:.2f}")
median_dA = numpy.median(numpy.linalg.norm(ln_delta_A, axis=1))
median_du = numpy.median(numpy.linalg.norm(ln_update.delta_u, axis=1))
ln2_bound = 2 * numpy.max(numpy.abs(ln_block.ln2.gain)) * math.sqrt(ln_config.d_token)
max_du = numpy.max(numpy.linalg.norm(ln_update.delta_u, axis=1))
print(f"                median ‖δA‖ {median_dA:.1f}, median ‖δu‖ {median_du:.2f},"
      f" largest ‖δu‖ {max_du:.4f} ≤ 2 max|γ₂|√D = {ln2_bound:.4f}")

# %% [markdown]
# The closed form gives the change of $h$ exactly. LN2 then bends it and, above all, bounds
# it: each normalised row has norm at most $\sqrt D$, so $\|u - \beta_2\| \le
# \max|\gamma_2|\sqrt D$ however far $h$ moves, and $\delta u = u_C - u_\emptyset$, a
# difference of two such vectors, has $\|\delta u\| \le 2\max|\gamma_2|\sqrt D$ ($= 2\sqrt 3
# \approx 3.46$ for the initial gain $\gamma_2 = 1$). Here $\delta A$ is longer than that bound
# (median norm about 9.5), and $\delta u$ is about ten times shorter than $\delta A$. One
# prompt almost reaches the bound: with $D = 3$ every normalised row lies in the plane of
# entries that sum to 0, at a distance just under $\sqrt 3$ from the origin (a circle, up to
# the eps of LN2), and $u_C$, $u_\emptyset$ can sit nearly opposite on it.

# %% [markdown]
# ## 2. One linear attention layer = one step of gradient descent
#
# The gradient of $L(\theta) = \frac{1}{2N}\sum_j (\theta x_j - y_j)^2$ is
# $\nabla L(\theta_0) = \frac1N \sum_j (\theta_0 x_j - y_j)\, x_j^\top$, so
#
# $$
# (\theta_0 - \theta_1)\, x_q = \frac{\eta}{N}\sum_j (\theta_0 x_j - y_j)\; x_j^\top x_q .
# $$
#
# The layer $e_q + W_P \sum_j W_V e_j (W_K e_j)^\top W_Q e_q$ computes exactly this if the
# key and query pick out the inputs, $(W_K e_j)^\top W_Q e_q = x_j^\top x_q$, the value's
# $y$-entry is the residual $\theta_0 x_j - y_j$, and $W_P$ supplies $\eta/N$.
#
# ### Your turn: von Oswald's weights
#
# Return `(W_K, W_Q, W_V, W_P)`, each $(d+1)\times(d+1)$, for input width $d$, step size
# $\eta$, $N$ context pairs and starting weights $\theta_0$ (a vector of length $d$):
#
# $$
# W_K = W_Q = \begin{pmatrix} I_d & 0\\ 0 & 0\end{pmatrix},\qquad
# W_V = \begin{pmatrix} 0 & 0\\ \theta_0 & -1\end{pmatrix},\qquad
# W_P = \frac{\eta}{N} I_{d+1}.
# $$
#
# The check compares your matrices with exactly these (other pairs $W_K, W_Q$ with the same
# product $W_K^\top W_Q$ give the same layer: exercise 2).

# %%
def von_oswald_weights(d, eta, N, theta0):
    """von Oswald et al.'s (W_K, W_Q, W_V, W_P) for one GD step from θ_0, each (d+1, d+1)."""
    ### BEGIN SOLUTION
    W_K = numpy.zeros((d + 1, d + 1))
    W_K[:d, :d] = numpy.eye(d)
    W_Q = W_K.copy()
    W_V = numpy.zeros((d + 1, d + 1))
    W_V[d, :d] = theta0
    W_V[d, d] = -1.0
    W_P = eta / N * numpy.eye(d + 1)
    ### END SOLUTION
    return W_K, W_Q, W_V, W_P


# %%
check_von_oswald_weights(von_oswald_weights);

# %% [markdown]
# The check drew $\theta_0 \neq 0$, ran the layer with your weights and compared the query's
# $y$-slot with $y_q + (\theta_0 - \theta_1) x_q$ for an explicit step $\theta_1$. Here is the
# same comparison in the open, with the package's `von_oswald_attention` (which stores
# $W_O = \sqrt{K}\, W_P$, see below). Take $\theta_0 = 0$ and $y_q = 0$: the $y$-slot becomes
# $-\theta_1 x_q$.

# %%
d, N, eta = 2, 16, 0.5
gd_batch = regression_prompts(64, n_context=N, d=d, seed=2)
x, y, x_q = gd_batch.context_x, gd_batch.context_y, gd_batch.query_x  # (B, N, d), (B, N), (B, d)
vo_attn, _ = von_oswald_attention(d, eta, N)
K = vo_attn.W_Q.shape[0]
W_K, W_Q, W_V, W_P = vo_attn.W_K, vo_attn.W_Q, vo_attn.W_V, vo_attn.W_O / math.sqrt(K)

# the layer: e_q + W_P Σ_j W_V e_j (W_K e_j)ᵀ W_Q e_q, with e_j = (x_j; y_j), e_q = (x_q; 0)
e, e_q = gd_batch.context, gd_batch.query  # (B, N, d+1), (B, d+1)
scores = numpy.einsum("bjk,bk->bj", e @ W_K.T, e_q @ W_Q.T)  # (W_K e_j)ᵀ W_Q e_q = x_jᵀ x_q
layer_out = e_q + numpy.einsum("bjv,bj->bv", e @ W_V.T, scores) @ W_P.T  # (B, d+1)

# the explicit step: θ_1 = θ_0 − η ∇L(θ_0), ∇L(θ_0) = (1/N) Σ_j (θ_0 x_j − y_j) x_j, θ_0 = 0
theta1 = -eta * numpy.einsum("bj,bjd->bd", 0.0 - y, x) / N  # (B, d)
residual_layer = relative_residual(layer_out[:, d], -numpy.sum(theta1 * x_q, axis=1))
print(f"y-slot of the layer vs −θ_1 x_q: {residual_layer:.1e}")

# %% [markdown]
# **The same layer as a block of this package.** `von_oswald_model` builds it from linear
# attention with an attention skip and an all-zero MLP with a skip, and `von_oswald_predict`
# reads $\hat y$ from the $y$-slot. Two details differ from the formula above: the package
# divides the scores by $\sqrt K$, so its $W_O = \sqrt K\, W_P$; and the query attends to
# itself, adding $W_P\, W_V e_q (W_K e_q)^\top W_Q e_q$, which vanishes because the query's
# value $\theta_0 x_q - y_q$ is set to zero ($y_q = \theta_0 x_q$; then
# $\hat y = 2\theta_0 x_q - (y\text{-slot}) = \theta_1 x_q$). The package's
# `one_step_gd_predict` takes the explicit step.

# %%
vo_residuals = {}
for label, theta0 in (("θ_0 = 0", None), ("θ_0 = (0.5, −1)", numpy.array([0.5, -1.0]))):
    for step in (0.1, 0.5, 1.0):
        layer = von_oswald_predict(gd_batch.tokens, step, theta0)
        explicit = one_step_gd_predict(gd_batch, step, theta0)
        vo_residuals[(label, step)] = relative_residual(layer, explicit)
for (label, step), value in vo_residuals.items():
    print(f"{label:16s} η = {step:.1f}: block vs explicit step {value:.1e}")

# %% [markdown]
# ## 3. The implicit update of a read-out after the von Oswald layer
#
# Put an MLP after the layer whose first weight reads minus the $y$-slot,
# $W = (0, \dots, 0, -1)$. With $\theta_0 = 0$ the query's own value vanishes, so $A(x) = 0$,
# the MLP input without context is $u_\emptyset = e_q + A(x) = e_q = (x_q; 0)$ (the block's
# attention skip passes $e_q$ on), and the context vector is
# the whole attention output, $\delta u = (0; -\theta_1 x_q)$. Theorem 2.2 then gives
#
# $$ \Delta W = \frac{(W\delta u)\, e_q^\top}{\|e_q\|^2}
#    = \Big(\frac{(\theta_1 x_q)\, x_q^\top}{\|x_q\|^2},\; 0\Big), $$
#
# the gradient-descent weights projected on the query direction: the minimum-norm matrix that
# agrees with the explicit step $\theta_1$ *at this query* only.

# %%
vo_config, vo_params = von_oswald_model(d, eta, N)
readout = numpy.zeros((1, d + 1))
readout[0, d] = -1.0  # W = (0, ..., 0, −1)
readout_config = TransformerConfig(**{**vo_config.to_dict(), "d_mlp": 1, "mlp_skip": False})
readout_mlp = MLPParams(W1=readout, b1=numpy.zeros(1), W2=numpy.zeros((d + 1, 1)),
                        b2=numpy.zeros(d + 1))
readout_params = ModelParams(blocks=(BlockParams(attn=vo_params.blocks[0].attn, mlp=readout_mlp,
                                                 ln1=None, ln2=None),))
(readout_update,) = implicit_update(readout_params, readout_config, e, e_q)
along_query = numpy.sum(theta1 * x_q, axis=1)[:, None] * x_q / numpy.sum(x_q * x_q, axis=1)[:, None]
expected = numpy.concatenate([along_query, numpy.zeros((len(x_q), 1))], axis=1)[:, None, :]
residual_readout = relative_residual(readout_update.delta_W, expected)  # (B, 1, d+1)
print(f"ΔW of the read-out vs ((θ_1 x_q) x_qᵀ/‖x_q‖², 0): {residual_readout:.1e}")

# %% [markdown]
# ## 4. The best single step: $\eta^* = 1/(1 + (d+1)/N)$
#
# From $\theta_0 = 0$ on noiseless prompts, $\theta_1 = \eta\,\frac1N\sum_j y_j x_j^\top = \eta\,(\hat\Lambda w)^\top$
# with $\hat\Lambda = \frac1N \sum_j x_j x_j^\top$ (the context's empirical covariance, an
# estimate of $\Lambda = I$), so the error at the query is
#
# $$
# \mathbb{E}\,(\theta_1 x_q - w^\top x_q)^2 = \mathbb{E}\,\|(\eta \hat\Lambda - I)\,w\|^2
# = \eta^2 \operatorname{tr}\mathbb{E}[\hat\Lambda^2] - 2\eta\, d + d
# = d\,\big[\eta^2 (1 + \tfrac{d+1}{N}) - 2\eta + 1\big],
# $$
#
# (with $w$ independent of $\hat\Lambda$, $\mathbb{E}[ww^\top] = I$ and
# $\mathbb{E}[x_q x_q^\top] = I$),
# using $\mathbb{E}[\hat\Lambda^2] = (1 + \frac{d+1}{N})\, I$ (exercise 1). Sweep $\eta$ for $d = 5$,
# $N = 10$ (where $\eta^* = 0.625$ is far from 1). The error is quadratic in $\eta$, so its
# empirical minimiser is $\hat\eta = \sum_b p_b y_b / \sum_b p_b^2$, with $p_b$ the
# prediction at $\eta = 1$ and $y_b$ the query's target $w^\top x_q$ in prompt $b$ (the
# prediction at $\eta$ is $\eta\, p_b$).

# %%
d_sweep, N_sweep = 5, 10
sweep = regression_prompts(100_000, n_context=N_sweep, d=d_sweep, seed=4)
etas = numpy.linspace(0.0, 1.4, 29)
measured = [mse(one_step_gd_predict(sweep, float(e)), sweep.target) for e in etas]
theory = [one_step_gd_mse(d_sweep, N_sweep, float(e)) for e in etas]
p_unit = one_step_gd_predict(sweep, 1.0)
eta_hat = float(numpy.sum(p_unit * sweep.target) / numpy.sum(p_unit * p_unit))
eta_star = optimal_gd_step(d_sweep, N_sweep)
curve_gap = relative_residual(numpy.array(measured), numpy.array(theory))
print(f"η* = {eta_star:.4f}, measured minimiser η̂ = {eta_hat:.4f}; "
      f"measured vs expected error curve: relative gap {curve_gap:.1e}")
print(f"the paper's setting, d = 2, N = 50: η* = {optimal_gd_step(2, 50):.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
ax.plot(etas, measured, "o", ms=4, label="measured (100 000 prompts)")
ax.plot(etas, theory, "-", label=r"$d\,[\eta^2(1+\frac{d+1}{N}) - 2\eta + 1]$")
ax.axvline(eta_star, color="tab:red", ls="--", lw=0.8, label=rf"$\eta^* = {eta_star:.3f}$")
ax.axvline(1.0, color="gray", ls=":", lw=0.8, label=r"$\eta = 1$")
ax.set_xlabel(r"step size $\eta$")
ax.set_ylabel("mean squared error at the query")
ax.set_title(f"one GD step, d = {d_sweep}, N = {N_sweep}")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# A trained linear-attention layer should not be expected to learn $\eta = 1$: the best single step
# shrinks the naive one by the factor $1/(1 + (d+1)/N)$. Zhang, Frei & Bartlett prove that a
# single linear-attention layer trained by gradient flow converges to
# $\hat y = x_q^\top \Gamma^{-1} \frac1N \sum_j y_j x_j$ with
# $\Gamma = (1 + \frac1N)\Lambda + \frac1N \operatorname{tr}(\Lambda) I$, which for $\Lambda = I$
# is this step, $\Gamma^{-1} = \eta^* I$. For the paper's setting ($d = 2$, $N = 50$),
# $\eta^* = 0.943$.

# %% [markdown]
# ## Summary
#
# - Linear attention: $\delta A_x(Y) = W_O \operatorname{concat}_{\text{heads}}[(\sum_{c\in Y} v_c k_c^\top)\, q_x/\sqrt K]$, exactly and additively; it is the MLP input's $\delta u$ only without LN2.
# - von Oswald: $W_K = W_Q = \begin{pmatrix} I_d & 0\\ 0 & 0\end{pmatrix}$, $W_V = \begin{pmatrix} 0 & 0\\ \theta_0 & -1\end{pmatrix}$, $W_P = \frac{\eta}{N} I$ turn the query's $y$-slot into $y_q + (\theta_0 - \theta_1)\, x_q$, with $\theta_1 = \theta_0 - \eta\nabla L(\theta_0)$.
# - A read-out after that layer gets $\Delta W = ((\theta_1 x_q)\, x_q^\top/\|x_q\|^2,\ 0)$: the explicit step, seen at one query.
# - The best single step: $\mathbb{E}[\hat\Lambda^2] = (1 + \frac{d+1}{N}) I$ gives $\eta^* = 1/(1 + (d+1)/N)$.

# %% [markdown]
# ## Exercises
#
# 1. *(derivation)* For $x_j \sim \mathcal{N}(0, I_d)$ and $\hat\Lambda = \frac1N\sum_{j=1}^N x_j x_j^\top$,
#    show $\mathbb{E}[\hat\Lambda^2] = (1 + \frac{d+1}{N})\, I$, and from it $\eta^* = 1/(1 + (d+1)/N)$
#    and the error $d\,(d+1)/(N+d+1)$ at $\eta^*$.
# 2. *(derivation)* Derive the von Oswald identity on paper: with the weights of section 2,
#    show that the layer turns the query's $y$-slot into $y_q + (\theta_0 - \theta_1)\, x_q$.
#    Which entries of $W_K$ and $W_Q$ could you change without changing the result?
# 3. *(prediction, then code)* Add label noise, $y_j = \langle w, x_j\rangle + \sigma\varepsilon_j$
#    (`regression_prompts(..., noise=σ)`). Predict whether the best step $\hat\eta$ moves above
#    or below $\eta^*$ for $\sigma = 1$, then measure it.
# 4. *(extension)* Are two von Oswald layers two gradient steps? Apply the layer twice, with
#    $\theta_0 = 0$ in both, letting it update every token (the context tokens' $y$-slots too).
#    Compare with $\theta_2 = \theta_1 - \eta\nabla L(\theta_1)$, first in von Oswald's form
#    (sums over the context only), then as a two-block model of this package.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** $\mathbb{E}[\hat\Lambda^2] = \frac{1}{N^2}\sum_{j,l}\mathbb{E}[x_j x_j^\top x_l x_l^\top]$.
# The $N(N-1)$ terms with $j \neq l$ give $I \cdot I = I$; the $N$ terms with $j = l$ give
# $\mathbb{E}[\|x\|^2 x x^\top] = (d + 2) I$ (Isserlis: $\mathbb{E}[x_a^2 x_b^2] = 1 + 2\delta_{ab}$,
# so the diagonal entries are $\sum_b \mathbb{E}[x_a^2 x_b^2] = d + 2$ and the off-diagonal ones
# vanish). So $\mathbb{E}[\hat\Lambda^2] = \frac{N(N-1) + N(d+2)}{N^2} I = (1 + \frac{d+1}{N}) I$.
# With $\mathbb{E}[\hat\Lambda] = I$ and $\mathbb{E}\|(\eta \hat\Lambda - I) w\|^2 = \operatorname{tr}\mathbb{E}[(\eta \hat\Lambda - I)^2]$
# ($w$ independent of $\hat\Lambda$, $\mathbb{E}[ww^\top] = I$) the error is
# $d[\eta^2(1 + \frac{d+1}{N}) - 2\eta + 1]$; its derivative vanishes at
# $\eta^* = 1/(1 + \frac{d+1}{N})$, where the error is $d(1 - \eta^*) = d\,(d+1)/(N + d + 1)$.
# A Monte Carlo check of $\mathbb{E}[\hat\Lambda^2]$:

# %% jupyter={"source_hidden": true}
rng = numpy.random.default_rng(0)
xs = rng.standard_normal((20_000, 6, 3))  # 20 000 draws of Λ̂ with N = 6, d = 3
Lambda_hat = numpy.einsum("rjd,rje->rde", xs, xs) / 6
mean_Lambda_hat2 = numpy.mean(Lambda_hat @ Lambda_hat, axis=0)
print(numpy.round(mean_Lambda_hat2, 2), f"\n1 + (d+1)/N = {1 + 4 / 6:.3f}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 2.** $W_K e_j = (x_j; 0)$ and $W_Q e_q = (x_q; 0)$, so
# $(W_K e_j)^\top W_Q e_q = x_j^\top x_q$. $W_V e_j = (0; \theta_0 x_j - y_j)$. Hence
# $$
# W_P \sum_j W_V e_j (W_K e_j)^\top W_Q e_q
#   = \Big(0;\ \frac{\eta}{N}\sum_j (\theta_0 x_j - y_j)\, x_j^\top x_q\Big)
#   = \big(0;\ \eta\,\nabla L(\theta_0)\, x_q\big) = \big(0;\ (\theta_0 - \theta_1)\, x_q\big),
# $$
# the $x$-part of $e_q$ is unchanged and its $y$-slot becomes $y_q + (\theta_0 - \theta_1)x_q$.
# The layer sees $W_K$ and $W_Q$ only through the bilinear form
# $e_j^\top W_K^\top W_Q\, e_q$, so only the product $W_K^\top W_Q = \begin{pmatrix} I_d & 0\\ 0 & 0\end{pmatrix}$
# matters: $W_K = \begin{pmatrix} R & 0\\ 0 & 0\end{pmatrix}$, $W_Q = \begin{pmatrix} R^{-\top} & 0\\ 0 & 0\end{pmatrix}$
# for any invertible $R$ give the same layer. Entry by entry, with the weights above: $W_K$'s
# last row meets $W_Q$'s last row, which is zero, so it is free (as is $W_Q$'s last row while
# $W_K$'s is zero, though not both at once); and since $y_q = 0$, $W_Q$'s last column
# multiplies 0 and is free too.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 3.** The noise leaves $\mathbb{E}[p\,y] = d$ unchanged but adds $\sigma^2 d/N$ to
# $\mathbb{E}[p^2]$ (for $p$ the prediction at $\eta = 1$), so the best step shrinks, to
# $\eta^*_\sigma = 1/(1 + (d+1)/N + \sigma^2/N)$: with noisy labels a cautious step averages
# less of the noise into the prediction.

# %% jupyter={"source_hidden": true}
sigma = 1.0
noisy = regression_prompts(100_000, n_context=N_sweep, d=d_sweep, seed=5, noise=sigma)
p_noisy = one_step_gd_predict(noisy, 1.0)
eta_noisy = float(numpy.sum(p_noisy * noisy.target) / numpy.sum(p_noisy * p_noisy))
print(f"σ = {sigma}: measured η̂ = {eta_noisy:.4f}, "
      f"1/(1 + (d+1)/N + σ²/N) = {1 / (1 + (d_sweep + 1) / N_sweep + sigma**2 / N_sweep):.4f}, "
      f"noiseless η* = {eta_star:.4f}")

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 4.** In von Oswald's form, yes, exactly. The first layer turns every token's
# $y$-slot into $y_j - \theta_1 x_j$ (the residual of $\theta_1$) and the query's into
# $-\theta_1 x_q$; the second layer (value $-(y\text{-slot})$) then adds
# $\frac{\eta}{N}\sum_j (\theta_1 x_j - y_j)\, x_j^\top x_q = \eta\nabla L(\theta_1)\, x_q$,
# so the query holds $-(\theta_1 - \eta \nabla L(\theta_1)) x_q = -\theta_2 x_q$. In the
# package's block the query is also a key and value for every token: after the first layer its
# value is $-y_q = \theta_1 x_q \neq 0$, and the second layer adds a term of order $1/N$, so
# two blocks are *not* exactly two steps.

# %% jupyter={"source_hidden": true}
theta = numpy.zeros((len(x_q), d))
for _ in range(2):  # two explicit steps
    theta = theta - eta * numpy.einsum("bj,bjd->bd", numpy.sum(theta[:, None] * x, -1) - y, x) / N
tokens = gd_batch.tokens
for _ in range(2):  # two layers in von Oswald's form: every token t, sums over the context j
    keys, values = tokens[:, :-1] @ W_K.T, tokens[:, :-1] @ W_V.T
    scores_all = numpy.einsum("bjk,btk->btj", keys, tokens @ W_Q.T)  # (B, N+1, N)
    tokens = tokens + numpy.einsum("bjv,btj->btv", values, scores_all) @ W_P.T
two_layers = relative_residual(tokens[:, -1, d], -numpy.sum(theta * x_q, axis=1))
two_config = TransformerConfig(**{**vo_config.to_dict(), "n_blocks": 2})
two_blocks, _ = forward(ModelParams(blocks=vo_params.blocks * 2), two_config, gd_batch.tokens)
gap_two_blocks = relative_residual(two_blocks[:, -1, d], -numpy.sum(theta * x_q, axis=1))
print(f"two layers (von Oswald's form) vs −θ_2 x_q: {two_layers:.1e}")
print(f"two blocks of the package       vs −θ_2 x_q: {gap_two_blocks:.2f}")

# %% [markdown]
# ## Checks

# %%
assert residual_closed_form <= IDENTITY_RTOL and residual_partial <= IDENTITY_RTOL
assert residual_additive <= IDENTITY_RTOL
assert residual_ln_h <= IDENTITY_RTOL and gap_ln_u > 1e-2  # LN2 breaks δu = δA
assert max_du <= ln2_bound < median_dA and size_ratio < 0.2  # ... and bounds δu
assert residual_layer <= IDENTITY_RTOL
assert max(vo_residuals.values()) <= IDENTITY_RTOL
assert residual_readout <= IDENTITY_RTOL
assert abs(optimal_gd_step(2, 50) - 1 / (1 + 3 / 50)) <= IDENTITY_RTOL
assert abs(eta_hat - eta_star) <= 0.02  # ~10 standard errors for 100 000 prompts
assert curve_gap <= 0.02
assert etas[int(numpy.argmin(measured))] == etas[int(numpy.argmin(numpy.abs(etas - eta_star)))]
assert two_layers <= IDENTITY_RTOL and gap_two_blocks > 1e-3
