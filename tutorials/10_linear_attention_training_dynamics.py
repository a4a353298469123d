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
# # 10. How linear attention acquires in-context learning
#
# Symbols as in the [notation](../docs/notation.md) table: $d$ is the input dimension (the
# paper writes $D$), tokens have width $d + 1$, $N$ context pairs, $H$ heads, $\Lambda$ the
# covariance of the inputs, $\Gamma = (1 + \frac1N)\Lambda + \frac1N\operatorname{tr}(\Lambda) I$.
#
# Tutorial 8 showed what a trained linear-attention layer *does*: one step of
# (preconditioned) gradient descent on its context. This page shows how gradient descent
# on the weights *gets there*, following Zhang, Singh, Latham & Saxe, "Training dynamics of
# in-context learning in linear attention" (ICML 2025, arXiv:2501.16265). With tokens as the
# columns of
#
# $$
# X = \begin{pmatrix} x_1 & \cdots & x_N & x_q\\ y_1 & \cdots & y_N & 0\end{pmatrix}
# \in \mathbb{R}^{(d+1)\times(N+1)},\qquad
# x \sim \mathcal{N}(0, \Lambda),\ w \sim \mathcal{N}(0, I_d),\ y = w^\top x,
# $$
#
# the prediction $\hat y$ is the bottom-right entry of the layer's output, and the two
# parametrizations are
#
# $$
# \mathrm{ATTN_M}(X) = X + \sum_{i=1}^H \tfrac1N W^V_i X X^\top W^{KQ}_i X,\qquad
# \mathrm{ATTN_S}(X) = X + \sum_{i=1}^H \tfrac1N W^V_i X X^\top {W^K_i}^{\!\top} W^Q_i X,
# $$
#
# with $W^K_i, W^Q_i \in \mathbb{R}^{R\times(d+1)}$ (rank $R$). **The paper's results**, which
# we check here:
#
# * ATTN_M, with the entries $\bar v_i$, $\bar u_i$ that start at zero kept at zero (the
#   population gradient keeps them there), is exactly a two-layer linear network on the cubic
#   feature $z = \operatorname{vec}(\beta x_q^\top)$, $\beta = \frac1N\sum_n y_n x_n$; its loss makes
#   **one abrupt drop**, to the predictor $\hat y = \beta^\top \Gamma^{-1} x_q$.
# * ATTN_S with rank 1 passes **$d + 1$ plateaus** $M_0, \dots, M_d$ ($d$ drops), learning
#   the eigenvectors of $\Lambda$ one at a time in decreasing order of eigenvalue; at plateau $m$ it runs principal
#   component regression on $m$ components, at the loss
#   $L(M_m) = \operatorname{tr}\Lambda - \sum_{d'\le m} \lambda_{d'}/(1 + (1 + \operatorname{tr}\Lambda/\lambda_{d'})/N)$.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy

from minimal_icl import linattn as la
from minimal_icl.data import optimal_gd_step
from minimal_icl.exercises.tutorial_10 import check_cubic_feature, check_plateau_losses
from minimal_icl.experiments import linattn_dynamics as ld
from minimal_icl.gradcheck import assert_gradients_ok, check_layer
from minimal_icl.tolerances import GRADCHECK_RTOL, IDENTITY_RTOL, relative_residual

FAST = os.environ.get("MINIMAL_ICL_FAST") == "1"  # the test suite's short run

# %% [markdown]
# ## 1. The task and the two layers
#
# The paper's default data: $d = 4$, $N = 31$, eigenvalues of $\Lambda$ proportional to
# $1, \dots, d$ and normalised so that $\operatorname{tr}\Lambda = 1$, with a random orthogonal $Q$,
# $\Lambda = Q\operatorname{diag}(\lambda)Q^\top$; a **fixed** training set of $P$ sequences,
# trained by full-batch gradient descent on $L = \operatorname{mean}(y_q - \hat y)^2$ (no ½, as
# the reference code). The package keeps the paper's $1/N$ and draws $w \sim \mathcal N(0, I)$;
# the reference code leaves out the $1/N$ and centres $x$ and whitens $w$ over the training
# set.

# %%
d, N = 4, 31
cov = la.covariance(d, seed=0)
data = la.sequences(6, N, cov, seed=1)
print("λ =", cov.eigenvalues, " tr Λ =", cov.Lambda.trace().round(12))
print("X:", data.X.shape, " query column's y-entry:", data.X[0, d, N])

# %% [markdown]
# Each forward is a handful of matrix products, $G = XX^\top/N$ first (a
# $(d+1)\times(d+1)$ matrix), then $W^V_i G W^{KQ}_i X$ per head. The backwards are written
# by hand, each step under the forward line it inverts (`linattn.merged_backward`,
# `linattn.separate_backward`), and checked against finite differences with a random
# upstream gradient. The initial weights have the paper's zero-initialised entries: the
# value's $\bar v_i$ (its bottom row without the last entry) and, for ATTN_M, $\bar u_i$
# (the last row of $W^{KQ}_i$'s first $d$ columns); for ATTN_S, the key's $y$-entry.

# %%
params_m = la.init_merged(d, n_heads=3, scale=0.5, seed=2)
params_s = la.init_separate(d, n_heads=3, rank=2, scale=3.0, seed=2)
gradient_errors = {}
layers = [("ATTN_M", params_m, la.merged_forward, la.merged_backward),
          ("ATTN_S", params_s, la.separate_forward, la.separate_backward)]
for name, params, fw, bw in layers:
    errors = check_layer(lambda inp: fw(*inp), lambda g, cache: bw(g, cache),
                         (data.X, params))
    assert_gradients_ok(errors, GRADCHECK_RTOL)
    gradient_errors[name] = max(errors.values())
    out, _ = fw(data.X, params)
    print(f"{name}: out {out.shape}, ŷ = out[:, d, N] = "
          f"{la.prediction(out)[:3].round(4)}…, largest gradient error"
          f" {gradient_errors[name]:.1e}")

# %% [markdown]
# ## 2. ATTN_M is a two-layer network on a cubic feature
#
# Write the bottom row of $W^V_i$ as $(\bar v_i^\top, v_i)$ and the first $d$ columns of
# $W^{KQ}_i$ as $\begin{pmatrix}U_i\\ \bar u_i^\top\end{pmatrix}$. The bottom row of
# $W^V_i X X^\top/N$ at column $a$ is $\frac1N\sum_n(\bar v_i^\top x_n + v_i y_n)\,X_{an}$, and
# $W^{KQ}_i$ applied to the query column $(x_q; 0)$ gives $(U_i x_q; \bar u_i^\top x_q)$. With
# $\bar v_i = 0$, $\bar u_i = 0$ (and $y_q = 0$, so the query's own term vanishes):
#
# $$
# \hat y = \sum_i v_i \Big(\tfrac1N\sum_n y_n x_n\Big)^{\!\top} U_i x_q
#   = \sum_i v_i\, \beta^\top U_i x_q = w_2^\top W_1 z,\qquad
# z = \operatorname{vec}(\beta x_q^\top) \in \mathbb{R}^{d^2},
# $$
#
# rows of $W_1$ the $\operatorname{vec}(U_i)^\top$, $w_2 = (v_1, \dots, v_H)$. The feature $z$
# is cubic in the data ($\beta$ quadratic, $x_q$ linear); the network is linear in $z$ with
# two layers, the classic setting of Saxe et al.'s exact learning dynamics.
#
# ### Your turn: the cubic feature
#
# Write $z = \operatorname{vec}(\beta x_q^\top)$ (row-major: `z[b, i*d + j]` $= \beta_i x_{q,j}$)
# for tokens `X` of shape $(B, d+1, N+1)$, with $\beta = \frac1N\sum_{n=1}^N y_n x_n$ over the
# $N$ context columns only. Name the result `z`: the cell's last line flattens it to
# $(B, d^2)$, so `z` may be the $(B, d, d)$ array of the outer products $\beta x_q^\top$.

# %%
def cubic_feature(X):
    """z = vec(β x_qᵀ), β = (1/N) Σ_n y_n x_n: (B, d+1, N+1) -> (B, d²)."""
    B, D, T = X.shape
    ### BEGIN SOLUTION
    d_in, n_ctx = D - 1, T - 1
    beta = X[:, :d_in, :n_ctx] @ X[:, d_in, :n_ctx, None] / n_ctx  # (B, d, 1)
    z = beta * X[:, None, :d_in, n_ctx]  # (B, d, d): β x_qᵀ
    ### END SOLUTION
    return z.reshape(B, -1)


# %%
check_cubic_feature(cubic_feature);

# %% [markdown]
# The check also ran ATTN_M and the network $w_2^\top W_1 z$ on your $z$ and found the same
# prediction. Because the two have the same prediction as functions of corresponding
# weights, and the map between the weights is a selection of entries, **gradient descent on
# both gives the same trajectory** as long as $\bar v_i, \bar u_i$ stay at zero (the
# population gradient keeps them there; on a finite training set we hold them at zero,
# `freeze_zero_blocks=True`). Thirty steps on 64 sequences:

# %%
small = la.sequences(64, N, cov, seed=3)
start = la.init_merged(d, n_heads=4, scale=0.3, seed=4)
loss_attn, _ = la.per_sequence_gd(start, small, 0.5, 30, freeze_zero_blocks=True)
loss_cubic, _ = la.per_sequence_gd(la.merged_to_cubic(start), small, 0.5, 30)
equivalence = float(numpy.max(numpy.abs(loss_attn - loss_cubic) / loss_cubic))
print(f"loss {loss_attn[0]:.4f} -> {loss_attn[-1]:.4f}; largest relative difference"
      f" of the two curves: {equivalence:.1e}")

# %% [markdown]
# ## 3. Training fast: the data enter through three statistics
#
# The prediction is linear in a small tensor built from the weights, acting on features of
# the data:
#
# $$
# \hat y = \langle T, G \otimes x_q\rangle,\qquad
# T_{abc} = \sum_i (W^V_i)_{d+1,a}\, (M_i)_{bc},\qquad
# M_i = \text{first } d \text{ columns of } W^{KQ}_i \text{ (or of } {W^K_i}^{\!\top} W^Q_i),
# $$
#
# so with $\varphi = \operatorname{vec}(G\otimes x_q) \in \mathbb{R}^{(d+1)^2 d}$ (100 entries
# for $d = 4$) and $t = \operatorname{vec}(T)$ the training loss is the quadratic
# $L = \overline{y_q^2} - 2\,t^\top\overline{y_q\varphi} + t^\top\overline{\varphi\varphi^\top}\,t$.
# The three means are computed once (`feature_statistics`); an epoch of full-batch gradient
# descent then costs the same for any $P$, and it is **exact** (tests/test_linattn.py checks it
# against the per-sequence forward and backward step by step). This is the package's speed
# trick; the held-out loss uses the statistics of held-out sequences the same way. Here is
# the whole of full-batch gradient descent on ATTN_M (`train_gd` is this loop with
# recording):

# %%
P, P_heldout = (5_000, 20_000) if FAST else (20_000, 100_000)
t0 = time.perf_counter()
train = la.feature_statistics(la.sequences(P, N, cov, seed=11))
heldout = la.feature_statistics(la.sequences(P_heldout, N, cov, seed=12))
params = la.init_merged(d, n_heads=8, scale=5.6e-6, seed=13)
merged_curve = []
for epoch in range(3_001):
    loss, grads = la.statistics_gradients(params, train)  # exact, from the statistics
    merged_curve.append(la.loss_from_statistics(params, heldout))
    params = la.MergedParams(*(w - 0.124 * g for w, g in zip(params, grads)))
print(f"P = {P}: 3,001 epochs of ATTN_M in {time.perf_counter() - t0:.1f} s, statistics"
      f" included; held-out loss {merged_curve[0]:.4f} -> {merged_curve[-1]:.4f}")

# %% [markdown]
# ## 4. ATTN_M: one abrupt drop, to $\Gamma^{-1}$
#
# The global minimum of the population loss over predictors $\hat y = \beta^\top A x_q$ is
# (Zhang, Frei & Bartlett 2024)
#
# $$
# A^\star = \Gamma^{-1} = \Big(\Lambda + \frac{\Lambda + \operatorname{tr}(\Lambda) I}{N}\Big)^{-1},
# $$
#
# and the effective matrix of the trained layer, $A = \sum_i v_i U_i$ (`effective_matrix`),
# should land there. Its loss $L(\Gamma^{-1})$ is printed below from `plateau_losses` (§5):
# $\Gamma^{-1}$ is the last of the saddles $A_m$ of §5, $A_d$, whose coefficients
# $c_{d'}$ are the eigenvalues of $\Gamma^{-1}$, so $L(\Gamma^{-1}) = L(M_d)$.

# %%
A_merged = la.effective_matrix(params)
Gamma_inv = la.converged_predictor(cov.Lambda, N)
merged_error = numpy.linalg.norm(A_merged - Gamma_inv) / numpy.linalg.norm(Gamma_inv)
levels = la.plateau_losses(cov.eigenvalues, N)
print(f"‖A − Γ⁻¹‖/‖Γ⁻¹‖ = {merged_error:.3f};  final held-out loss"
      f" {merged_curve[-1]:.4f}, L(Γ⁻¹) = {levels[-1]:.4f}")

# %% [markdown]
# The residual is the training set's: $P$ sequences fit 100 features, and their own
# least-squares optimum differs from the population's by a percent or a few (0.015 at
# $P$ = 20,000, printed below; it shrinks as $P$ grows: 0.02–0.05 over seeds at $P$ = 5,000
# in the package's runs). To see it, fit
# $\hat y = \beta^\top A x_q$ to the training set directly: in $t = \operatorname{vec}(T)$
# these predictors use only the entries $T_{d+1,b,c}$, $b, c \le d$ (the index $a = d + 1$
# picks $G$'s $y$-row, $G_{d+1,b} = \frac1N\sum_n y_n x_{n,b} = \beta_b$, the query's $y$
# being 0), so the quadratic loss restricted to them is minimised by one
# $d^2 \times d^2$ linear solve.

# %%
rows = d * (d + 1) * d + numpy.arange(d * d)  # where T[d, b, c], b, c < d, sit in vec(T)
A_train = numpy.linalg.solve(train.second[numpy.ix_(rows, rows)], train.cross[rows])
A_train = A_train.reshape(d, d)  # the training set's own optimum
train_gap = numpy.linalg.norm(A_merged - A_train) / numpy.linalg.norm(Gamma_inv)
train_error = numpy.linalg.norm(A_train - Gamma_inv) / numpy.linalg.norm(Gamma_inv)
print(f"‖A − A_train‖/‖Γ⁻¹‖ = {train_gap:.4f};  ‖A_train − Γ⁻¹‖/‖Γ⁻¹‖ = {train_error:.3f}")

# %% [markdown]
# ## 5. ATTN_S: the plateaus, predicted
#
# With rank-1 heads, $\hat y = \sum_i v_i (\beta^\top k_i)(q_i^\top x_q)$. From small weights the
# heads cannot grow a full matrix at once: the dynamics visits the saddles $M_m$ where the
# effective matrix is principal component regression on the top $m$ eigenvectors $e_{d'}$ of
# $\Lambda$,
#
# $$
# A_m = \sum_{d'\le m} c_{d'}\, e_{d'} e_{d'}^\top,\qquad
# c_{d'} = \frac{1}{\lambda_{d'}\big(1 + (1 + \operatorname{tr}\Lambda/\lambda_{d'})/N\big)}.
# $$
#
# The loss of any $\hat y = \beta^\top A x_q$ follows from $\beta = S w$,
# $S = \frac1N\sum_n x_n x_n^\top$ and Isserlis' theorem,
# $\mathbb{E}[SBS] = (1 + \frac1N)\Lambda B\Lambda + \frac1N\operatorname{tr}(B\Lambda)\Lambda$ for a
# symmetric $B$ (for a general $B$,
# $\mathbb{E}[SBS] = \Lambda B\Lambda + \frac1N\Lambda B^\top\Lambda + \frac1N\operatorname{tr}(B\Lambda)\Lambda$).
# With $w \sim \mathcal N(0, I)$ and $B = A\Lambda A^\top$ this gives (`predictor_loss`)
#
# $$
# L(A) = \operatorname{tr}\Lambda - 2\operatorname{tr}(\Lambda A\Lambda)
#   + \Big(1 + \frac1N\Big)\operatorname{tr}(\Lambda A\Lambda A^\top\Lambda)
#   + \frac1N\operatorname{tr}\Lambda\,\operatorname{tr}(A\Lambda A^\top\Lambda);
# $$
#
# at $A_m$ each learned direction removes
# $\lambda_{d'}/(1 + (1 + \operatorname{tr}\Lambda/\lambda_{d'})/N)$ from $\operatorname{tr}\Lambda$.
#
# ### Your turn: the plateau levels
#
# Write $L(M_m) = \operatorname{tr}\Lambda - \sum_{d'\le m}\lambda_{d'}/(1 + (1 + \operatorname{tr}\Lambda/\lambda_{d'})/N)$
# for $m = 0, \dots, d$ (an array of $d + 1$ levels), the eigenvalues taken in **decreasing**
# order whatever order they are given in, and $\operatorname{tr}\Lambda = \sum_{d'}\lambda_{d'}$
# (1 on this page, not for every $\Lambda$: the check's sum to 2).

# %%
def plateau_levels(eigenvalues, n_context):
    """L(M_m), m = 0..d, for the eigenvalues of Λ and N context pairs: (d+1,)."""
    lam = numpy.sort(numpy.asarray(eigenvalues, dtype=float))[::-1]
    ### BEGIN SOLUTION
    gain = lam / (1 + (1 + lam.sum() / lam) / n_context)
    levels = lam.sum() - numpy.concatenate([[0.0], numpy.cumsum(gain)])
    ### END SOLUTION
    return levels


# %%
check_plateau_losses(plateau_levels);

# %% [markdown]
# For the paper's example, $\lambda = (0.4, 0.3, 0.2, 0.1)$ and $N = 31$:

# %%
print("L(M_m), m = 0..4:", la.plateau_losses([0.4, 0.3, 0.2, 0.1], 31).round(4))

# %% [markdown]
# ## 6. ATTN_S: the plateaus, watched
#
# Rank-1 ATTN_S with $H = 5$ heads from a small start (the package's settings, measured to
# show every plateau: lr 0.395, initial scale 0.0628, 50,000 epochs; the test suite's short
# run starts at 0.126 for 12,000 epochs). We record the held-out loss and the projections
# of the effective matrix on the eigenvectors, $p_{d'}(t) = e_{d'}^\top A(t) e_{d'}/c_{d'}$,
# which go from 0 to 1 as a direction is learned.

# %%
s_init, s_epochs = (0.126, 12_000) if FAST else (0.0628, 50_000)
start_s = la.init_separate(d, n_heads=5, rank=1, scale=s_init, seed=14)
run_s = la.train_gd(start_s, train, heldout, lr=0.395, epochs=s_epochs, stride=10)
cfg = ld.LinearDynamicsConfig(n_train=P, n_heldout=P_heldout, s_init=s_init,
                              s_epochs=s_epochs)
info = ld.analyse(run_s, cov, cfg, s_epochs)
proj = info["projections"]
print("plateaus found:", len(info["plateaus"]), " drops:", info["drops"],
      " order learned (eigenvalue ranks):", info["eigenvector_order"])
print("measured :", numpy.round(numpy.array(info["measured"], dtype=float), 4))
print("predicted:", levels.round(4))

# %% [markdown]
# The plateau rule is the package's own (`linattn_dynamics.find_plateaus`): a plateau is a
# run of epochs over which the held-out loss changes by less than 0.5 % of
# $\operatorname{tr}\Lambda$ per window of 0.1 % of the run (at least two recorded
# epochs: 0.17 % in the fast setting), its level the median loss;
# plateaus closer than 2 % of $\operatorname{tr}\Lambda$ are one; each plateau is labelled by
# the number $m$ of directions with $p_{d'} > 1/2$ at its middle.

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
for m, level in enumerate(levels):
    ax1.axhline(level, color="0.6", linestyle=":", linewidth=0.8)
ax1.plot(run_s.epochs + 1, run_s.heldout_loss, label="ATTN_S, rank 1")
ax1.plot(numpy.arange(1, 3_002), merged_curve, label="ATTN_M")
ax1.set(xscale="log", xlabel="epoch + 1", ylabel="held-out loss",
        title="dotted: $L(M_m)$, m = 0..4")
ax1.legend()
for k in range(d):
    label = f"$e_{k + 1}$, λ = {cov.eigenvalues[k]:.1f}"
    ax2.plot(run_s.epochs + 1, proj[:, k], label=label)
ax2.set(xscale="log", xlabel="epoch + 1", ylabel="$e^T A e / c$",
        title="directions learned")
ax2.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. What the model computes at each plateau
#
# At plateau $m$ the effective matrix should be $A_m$, principal component regression on $m$
# components (the in-context algorithm: project $\beta$ and $x_q$ on the top $m$ eigenvectors
# and weight each direction by $c_{d'}$). We read, at the middle of each plateau, the
# projections $p_{d'}$ (1 for the learned directions, 0 for the others), the population loss
# of the learned $A$ (`predictor_loss`, no sampling) against $L(M_m)$, and the distance
# $\|A - A_m\|_F/\|A_m\|_F$:

# %%
pcr_rows, coupling_shares = [], []
for first, last, level in info["plateaus"][1:]:
    mid = numpy.searchsorted(run_s.epochs, (first + last) // 2)
    m = int(numpy.sum(proj[mid] > 0.5))
    A = run_s.effective[mid]
    target = la.pcr_matrix(cov, N, m)
    pcr_rows.append((m, proj[mid], la.predictor_loss(A, cov.Lambda, N),
                     numpy.linalg.norm(A - target) / numpy.linalg.norm(target)))
    print(f"m = {m}: p = {proj[mid].round(3)}, loss of A {pcr_rows[-1][2]:.4f}"
          f" (L(M_m) = {levels[m]:.4f}), ‖A − A_m‖/‖A_m‖ = {pcr_rows[-1][3]:.2f}")
    # the rest in the eigenbasis: the share of e_iᵀ(A − A_m)e_j, i learned and j not, or j and i
    rest = cov.eigenvectors.T @ (A - target) @ cov.eigenvectors
    new = numpy.arange(d) >= m  # the directions not yet learned
    if 0 < m < d:
        coupling = numpy.sum(rest[~new][:, new] ** 2) + numpy.sum(rest[new][:, ~new] ** 2)
        coupling_shares.append(coupling / numpy.sum(rest ** 2))
print("share of ‖A − A_m‖² in the learned–unlearned entries, 0 < m < d:",
      numpy.round(coupling_shares, 2))

# %% [markdown]
# The projections are the PCR pattern and the loss of $A$ is $L(M_m)$ to a percent or so.
# $A$ is not $A_m$ entry by entry: the rest, 0.02–0.3 of $\|A_m\|_F$ in the package's runs,
# sits mostly in entries $e_i^\top A e_j$ that couple a learned direction to one not yet
# learned (the shares printed above). They cost little loss (the loss weighs
# $(e_i^\top A e_j)^2$ by
# $(1 + \frac1N)\lambda_i^2\lambda_j + \frac1N\lambda_i\lambda_j\operatorname{tr}\Lambda$, small
# next to what a learned direction gains). Most of the rest is the finite training set's, not
# a transient: during a plateau it barely moves, and it shrinks as $P$ grows (on the $M_3$
# plateau 0.06 of $\|A_3\|_F$ at $P$ = 20,000, printed above, 0.015–0.025 at 100,000 and
# under 0.01 at 400,000 in the package's runs). The short first plateau is the exception:
# there the rest is a transient, fading through the whole plateau (at $P$ = 20,000 from 0.17
# at its first epoch to the 0.07 printed above), and it does not shrink with $P$ (still 0.07
# at the middle of that plateau at $P$ = 400,000). On the last plateau the rest is the
# training set's own optimum, as for ATTN_M.
#
# %% [markdown]
# ## 8. How the time of the drop depends on the initial scale
#
# The paper: ATTN_M's drop comes after a time that grows like $\log(1/\text{scale})$ (the
# weights grow exponentially from a small start, as in a two-layer linear network).
# For rank-1 ATTN_S the prediction is cubic in the weights; a scalar sketch of ours,
# $\dot a \propto a^2$ for three balanced factors of size $a$, blows up at a time
# $\propto 1/a_0$, so we expect the first drop at a time proportional to $1/\text{scale}$ (the
# package's prediction, not a statement of the paper). The first drop's time is the first
# epoch below the midpoint of the levels around it.

# %%
s_scales = (0.126, 0.252) if FAST else (0.0314, 0.0628, 0.126, 0.252)
m_scales = (5.6e-8, 5.6e-6, 5.6e-4)
s_times, m_times = [], []
for scale in s_scales:
    run = la.train_gd(la.init_separate(d, 5, 1, scale, seed=14), train, heldout, 0.395,
                      50_000, stride=10, stop_below=(levels[0] + levels[1]) / 2)
    s_times.append(ld.drop_time(run, (levels[0] + levels[1]) / 2))
for scale in m_scales:
    run = la.train_gd(la.init_merged(d, 8, scale, seed=13), train, heldout, 0.124,
                      5_000, stride=1, stop_below=(levels[0] + levels[-1]) / 2)
    m_times.append(ld.drop_time(run, (levels[0] + levels[-1]) / 2))
s_slope = numpy.polyfit(numpy.log(s_scales), numpy.log(s_times), 1)[0]
m_steps = numpy.diff(m_times)
print("ATTN_S first drop:", dict(zip(s_scales, s_times)))
print(f"  log-log slope {s_slope:.2f}")
print("ATTN_M drop:", dict(zip(m_scales, m_times)))
print("  change of the drop epoch per ×100 in scale:", m_steps)

# %% [markdown]
# ATTN_S: the slope is close to −1 (time ∝ 1/scale). ATTN_M: each factor of 100 in the
# initial scale moves the drop by the same number of epochs (time linear in
# $\log(1/\text{scale})$). The number itself follows from the cubic-feature network (our
# linearisation, not a statement of the paper): near zero its weights grow like
# $e^{2\,\mathrm{lr}\,s\,t}$, to first order in $\mathrm{lr}\,s$ (lr the training learning
# rate, $t$ the epoch), with
# $s = \|\mathbb{E}[y_q z]\|$, and
# $\mathbb{E}[y_q\,\beta x_q^\top] = \mathbb{E}[S w w^\top x_q x_q^\top] = \Lambda^2$, so the drop moves
# by $\ln(100)/(2\,\mathrm{lr}\,\|\Lambda^2\|_F)$ epochs per factor of 100 in the scale:

# %%
per_100 = numpy.log(100) / (2 * 0.124 * numpy.linalg.norm(cov.Lambda @ cov.Lambda))
print(f"predicted {per_100:.1f} epochs per ×100, measured {-numpy.mean(m_steps):.1f}")

# %% [markdown]
# ## 9. The end point is one step of preconditioned gradient descent
#
# Both parametrizations end at $\hat y = \beta^\top \Gamma^{-1} x_q$: one step of
# preconditioned gradient descent from $\theta_0 = 0$ on
# $L(\theta) = \frac1{2N}\sum_j(\theta x_j - y_j)^2$, whose gradient at 0 is $-\beta^\top$. For
# white inputs, $\Lambda = I$, the preconditioner is a number,
# $\Gamma^{-1} = I/(1 + (d+1)/N) = \eta^* I$: exactly tutorial 8's best single step.

# %%
white = la.converged_predictor(numpy.eye(d), N)
white_residual = relative_residual(white, optimal_gd_step(d, N) * numpy.eye(d))
print(f"Γ⁻¹ for Λ = I: {white[0, 0]:.6f} I;  η* = {optimal_gd_step(d, N):.6f}")

# %% [markdown]
# ## Summary
#
# - ATTN_M with $\bar v_i = \bar u_i = 0$ is a two-layer linear network on the cubic feature: $\hat y = \sum_i v_i\beta^\top U_i x_q = w_2^\top W_1 \operatorname{vec}(\beta x_q^\top)$, with the same gradient-descent trajectory.
# - The data enter through $\overline{\varphi\varphi^\top}$, $\overline{y_q\varphi}$, $\overline{y_q^2}$ with $\varphi = \operatorname{vec}(XX^\top/N \otimes x_q)$: after one pass over the data, each step of exact full-batch GD costs the same for any $P$.
# - ATTN_M makes one drop, at a time growing like $\ln(1/\text{scale})/(2\,\mathrm{lr}\,\|\Lambda^2\|_F)$, to $\hat y = \beta^\top(\Lambda + (\Lambda + \operatorname{tr}\Lambda\, I)/N)^{-1} x_q$.
# - Rank-1 ATTN_S learns $e_1, e_2, \dots$ in turn, resting at $L(M_m) = \operatorname{tr}\Lambda - \sum_{d'\le m}\lambda_{d'}/(1 + (1 + \operatorname{tr}\Lambda/\lambda_{d'})/N)$, where it runs principal component regression $A_m = \sum_{d'\le m} c_{d'} e_{d'}e_{d'}^\top$.
# - For $\Lambda = I$ the end point is tutorial 8's step: $\Gamma^{-1} = \eta^* I$, $\eta^* = 1/(1 + (d+1)/N)$.

# %% [markdown]
# ## Exercises
#
# 1. *(derivation)* For $\hat y = c\,\beta^\top e e^\top x_q$ with $e$ a unit eigenvector of
#    $\Lambda$ (eigenvalue $\lambda$), use `predictor_loss`'s formula to write the loss as a
#    quadratic in $c$, find the best $c$ and show that the loss drops by
#    $\lambda/(1 + (1 + \operatorname{tr}\Lambda/\lambda)/N)$ from $\operatorname{tr}\Lambda$.
# 2. *(prediction, then code)* With rank-2 heads ($R = 2$), predict which plateaus
#    $L(M_m)$ remain visible, then run ATTN_S with `rank=2` and look.
# 3. *(extension)* Take $d = 2$ with $\lambda = (0.9, 0.1)$. Predict the two drops' levels and
#    which is slower, then train rank-1 ATTN_S and compare the times at which $p_1$ and $p_2$
#    pass 1/2.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 1.** With $A = c\,ee^\top$: $\operatorname{tr}(\Lambda A\Lambda) = c\lambda^2$,
# $\operatorname{tr}(\Lambda A\Lambda A^\top\Lambda) = c^2\lambda^3$ and
# $\operatorname{tr}(A\Lambda A^\top\Lambda) = c^2\lambda^2$, so
# $L(c) = \operatorname{tr}\Lambda - 2c\lambda^2 + c^2\lambda^2\big[(1 + \frac1N)\lambda + \frac{\operatorname{tr}\Lambda}{N}\big]$.
# The minimum is at $c = 1/[(1 + \frac1N)\lambda + \frac{\operatorname{tr}\Lambda}N] = 1/(\lambda(1 + (1 + \operatorname{tr}\Lambda/\lambda)/N))$,
# and there $L = \operatorname{tr}\Lambda - c\lambda^2 = \operatorname{tr}\Lambda - \lambda/(1 + (1 + \operatorname{tr}\Lambda/\lambda)/N)$.
# Directions along different eigenvectors do not interact in the formula ($\Lambda$ is diagonal
# in that basis), so the drops add up: that is $L(M_m)$.

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 2.** The paper: a rank-$R$ head learns $R$ directions together, so the visible
# plateaus are at $m = 0, R, 2R, \dots$; for $R = 2$, $L(M_0)$, $L(M_2)$ and $L(M_4)$. In the
# package's runs $e_1$ and $e_2$ are indeed learned within 7 % of each other's time (no
# plateau at $L(M_1)$). A plateau at $L(M_3)$ remains, though: $e_3$ and $e_4$ were not
# learned together in any of the nine seeds we tried (15–23), and that plateau lasted 0.06
# to 0.43 times as long as the $M_2$ one (0.43 for the seed below); in one seed $e_1$, $e_2$
# and $e_3$ were learned together instead, leaving no plateau at $L(M_2)$.
# Read the printed levels.

# %% jupyter={"source_hidden": true}
start_r2 = la.init_separate(d, n_heads=5, rank=2, scale=s_init, seed=15)
run_r2 = la.train_gd(start_r2, train, heldout, lr=0.395, epochs=s_epochs, stride=10)
info_r2 = ld.analyse(run_r2, cov, cfg, s_epochs)
print("rank 2: plateau levels",
      [round(level, 4) for _, _, level in info_r2["plateaus"]],
      " against L(M_0), L(M_2), L(M_4) =", levels[[0, 2, 4]].round(4))

# %% [markdown] jupyter={"source_hidden": true}
# **Solution 3.** $L(M_0) = 1$, $L(M_1) = 1 - 0.9/(1 + (1 + 1/0.9)/31) \approx 0.1574$,
# $L(M_2) \approx 0.1574 - 0.1/(1 + 11/31) \approx 0.0836$. The second direction is the slower
# one: at small weights the gradient that grows it is proportional to the square of its
# eigenvalue ($\mathbb{E}[y_q\,\beta x_q^\top] = \Lambda^2$, so $0.1^2$ against $0.9^2$), and
# in the run below it passes 1/2 tens of times later than the first.

# %% jupyter={"source_hidden": true}
cov2 = la.covariance(2, seed=5, eigenvalues=[0.9, 0.1])
train2 = la.feature_statistics(la.sequences(2_000, N, cov2, seed=6))
start2 = la.init_separate(2, 3, 1, 0.126, seed=7)
run2 = la.train_gd(start2, train2, train2, 0.395, 8_000)
p2 = ld.projections(run2.effective, cov2, N)
passed = [int(run2.epochs[numpy.argmax(p2[:, k] > 0.5)]) for k in range(2)]
print("levels", la.plateau_losses(cov2.eigenvalues, N).round(4),
      " p passes 1/2 at", passed)

# %%
assert max(gradient_errors.values()) <= GRADCHECK_RTOL
assert equivalence <= 1e-10  # the two trajectories agree to rounding
assert relative_residual(white, optimal_gd_step(d, N) * numpy.eye(d)) <= IDENTITY_RTOL
assert merged_error <= 0.1  # finite-P fit (tests/test_linattn.py: MATRIX_RTOL) ...
assert train_gap <= 0.25 * merged_error  # ... most of it the training set's own optimum
assert info["drops"] == d and info["eigenvector_order"] == [1, 2, 3, 4]
assert all(abs(x - y) <= 0.05 * y for x, y in zip(info["measured"], levels))
assert all(numpy.all(numpy.abs(p - (numpy.arange(d) < m)) < 0.1)
           for m, p, _, _ in pcr_rows)  # the PCR pattern of the projections
assert all(abs(loss - levels[m]) <= 0.05 * levels[m] for m, _, loss, _ in pcr_rows)
assert all(share > 0.5 for share in coupling_shares)  # the rest couples learned and not
assert s_times[0] > s_times[-1] and m_times[0] > m_times[-1]
assert abs(-numpy.mean(m_steps) - per_100) <= 0.1 * per_100  # linearised growth rate
