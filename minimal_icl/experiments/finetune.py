"""Figure 4 (v1): explicit finetuning of W on the first i examples against the implicit patch.

For every held-out task and every i = 1..N:

* explicit: starting from the trained model, finetune ONLY the MLP's first weight W by
  full-batch gradient descent on the first i context examples, each example (x_k, y_k)
  presented as a query token (x_k; 0) ALONE (no context), with the squared error of the
  prediction: L(W) = (1/i) Σ_{k≤i} (T_W(x_k) − y_k)², step size lr / mean_k ‖A(x_k)‖²
  (see FinetuneConfig). The result is W + ΔW_ft.
* implicit: ΔW_i = ΔW(c_1..c_i), the patch of Theorem 2.2 for the test query x and the
  first i context tokens; its test loss is that of T_W(c_1..c_i, x) = T_{W+ΔW_i}(x).

Plotted against i, mean ± SE over the tasks: (a) the test loss of both at the task's
query, with baselines on the same tasks (zero predictor; one GD step on the first i
examples from w = 0 with the optimal step η* = 1/(1 + (d+1)/i); least squares on the
first i examples, minimum-norm for i < d; for noiseless labels ridge with λ = σ²/τ² = 0
is least squares); (b) the alignment cos_F(ΔW_ft, ΔW_i) = ⟨ΔW_ft, ΔW_i⟩_F /
(‖ΔW_ft‖_F ‖ΔW_i‖_F), under its ceiling: ΔW_i = (W δu) aᵀ/‖a‖² has the row a = A(x)
and a column in range(W), and no matrix of that shape has a larger cos_F with ΔW_ft
than ‖Π_W ΔW_ft a‖/(‖ΔW_ft‖_F ‖a‖) (``alignment_ceiling``); (c) the norms of both
updates; (d) the correlation over the tasks of the two predictions at the query.

The protocol (lone tokens, only W trained, full-batch GD, the step size) and panels
(b)–(d) are this package's own: the paper's finetuning protocol could not be recovered.

Finetuning runs all tasks at once: a per-task weight W + ΔW_ft (B, M, D) in the MLP
(``mlp_forward``/``mlp_backward`` accept one weight per prompt), applied at the i
positions of the lone tokens' MLP inputs (the MLP acts on each position on its own,
so this is the same as i separate one-token prompts). The test losses are then computed
with the whole model, ``predict(..., patches=...)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy

from ..block import BlockPatch, block_forward
from ..data import (
    RegressionBatch,
    least_squares_predict,
    one_step_gd_predict,
    optimal_gd_step,
    regression_prompts,
    zero_predict,
)
from ..dynamics import implicit_path
from ..mlp import mlp_backward, mlp_forward
from ..model import predict
from ..params import MLPParams
from .common import (
    QUIET,
    ExperimentError,
    Progress,
    cos_frobenius,
    mean_se,
    new_figure,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import paper_model

NAME = "finetune"
TITLE = "Figure 4: finetuning W on i examples against the implicit patch ΔW_i"


@dataclass(frozen=True)
class FinetuneConfig:
    """Our choices for Figure 4 (the paper's finetuning protocol could not be recovered).

    n_tasks:  held-out tasks (a fresh w, N context pairs and a test query each).
    lr:       the learning rate in units of the curvature: each task takes steps of size
              lr / mean_k ‖A(x_k)‖² (A(x_k) the MLP input of the lone example token). The
              loss is a function of W through W A(x_k), so its curvature scales with
              ‖A(x_k)‖², which is small for a lone token (≈ 0.002 for the paper model,
              against ≈ 0.2 with a context): a fixed learning rate would crawl for one
              model and diverge for another. The same normalisation as the implicit
              step h = 1/‖A(x)‖² of Proposition 3.1. lr = 0.2 is stable for every i; after
              200 steps the loss on the i examples is ≤ 0.015 (labels have variance
              d = 2): the fit is essentially complete.
    steps:    gradient steps for every i (from the trained W each time).
    contexts: the values of i: every i up to 10, then every 5 up to N = 50 (the cost
              of finetuning grows like i; the curves are smooth beyond 10).
    """

    n_tasks: int = 100
    lr: float = 0.2
    steps: int = 200
    contexts: tuple = (*range(1, 11), 15, 20, 25, 30, 35, 40, 45, 50)


def finetune_config(fast: bool = False) -> FinetuneConfig:
    if fast:
        return FinetuneConfig(steps=50, contexts=(1, 2, 3, 5, 10, 20, 50))
    return FinetuneConfig()


def lone_token_inputs(params, config, x: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The MLP input u and residual h of the block for each token (x_k; 0) alone.

    x (B, n, d). Returns (u (B, n, D), h (B, n, D)).
    """
    B, n, d = x.shape
    lone = numpy.concatenate([x, numpy.zeros((B, n, 1), dtype=x.dtype)], axis=-1)
    _, cache = block_forward(lone.reshape(B * n, 1, d + 1), params.blocks[0], config)
    return cache.u.reshape(B, n, d + 1), cache.h.reshape(B, n, d + 1)


def finetune_W(params, config, u: numpy.ndarray, h: numpy.ndarray, y: numpy.ndarray,
               lr: float, steps: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Full-batch gradient descent on each task's own copy of W (the MLP's W1) alone.

    u, h (B, i, D): the lone examples' MLP inputs and residuals; y (B, i): their labels.
    Loss per task: L(W) = (1/i) Σ_k (ŷ_k − y_k)², ŷ_k the last coordinate of the block's
    output (MLP(u_k), plus h_k with an MLP skip). Each task steps by
    W ← W − (lr / mean_k ‖u_k‖²) ∇L(W). Returns (ΔW_ft (B, M, D), the final training
    loss (B,)).
    """
    mlp = params.blocks[0].mlp
    B, i, D = u.shape
    scale = numpy.mean(numpy.sum(u * u, axis=-1), axis=1)  # (B,) mean_k ‖u_k‖²
    if numpy.any(scale == 0):
        raise ExperimentError("finetuning: a task's examples all have A(x_k) = 0 (no gradient)")
    step = (lr / scale)[:, None, None]  # (B, 1, 1)
    W = numpy.broadcast_to(mlp.W1, (B, *mlp.W1.shape))  # (B, M, D) one copy per task
    skip = h[..., -1] if config.mlp_skip else 0.0
    for _ in range(steps):
        out, cache = mlp_forward(u, MLPParams(W, mlp.b1, mlp.W2, mlp.b2), config.activation)
        residual = out[..., -1] + skip - y  # (B, i)
        dout = numpy.zeros_like(out)
        dout[..., -1] = (2.0 / i) * residual  # ∂L/∂ŷ_k
        _, grads = mlp_backward(dout, cache)  # grads.W1 (B, M, D): per task
        W = W - step * grads.W1
    out, _ = mlp_forward(u, MLPParams(W, mlp.b1, mlp.W2, mlp.b2), config.activation)
    loss = numpy.mean((out[..., -1] + skip - y) ** 2, axis=1)
    return W - mlp.W1, loss


def alignment_ceiling(F: numpy.ndarray, row: numpy.ndarray, W=None) -> numpy.ndarray:
    """The best cos_F(F, c aᵀ) over all columns c for a fixed row a (c in range(W) if W given).

        max_c cos_F(F, c aᵀ) = ‖Π F a‖ / (‖F‖_F ‖a‖),

    Π = I, or the orthogonal projector onto range(W). By Cauchy–Schwarz ⟨F, c aᵀ⟩_F =
    cᵀ(F a) = cᵀ(Π F a) for c in the range of Π, largest for c ∝ Π F a. Every ΔW_i of one
    query has the row a = A(x)/‖A(x)‖² and the column W δu in range(W), so no update of
    that shape aligns with F better than this (docs/theory.md §5).

    F (B, M, D), row a (B, D), W (M, D) or None. Returns (B,).
    """
    Fa = numpy.einsum("bmd,bd->bm", F, row)  # (B, M)
    if W is not None:
        basis, _ = numpy.linalg.qr(W)  # (M, D) orthonormal columns spanning range(W)
        Fa = (Fa @ basis) @ basis.T
    return numpy.linalg.norm(Fa, axis=1) / (numpy.linalg.norm(F, axis=(1, 2))
                                            * numpy.linalg.norm(row, axis=1))


def compute(model, cfg: FinetuneConfig, seed: int, progress: Progress = QUIET) -> dict:
    params, config, setup = model.params, model.config, model.setup
    if config.n_blocks != 1:
        raise ExperimentError("the finetuning comparison is for one block (Theorem 2.2)")
    N, d = setup.n_context, setup.d
    contexts = tuple(cfg.contexts)
    if not contexts or any(not 1 <= i <= N for i in contexts):
        raise ExperimentError(f"finetune contexts must lie in 1..{N}, got {contexts}")
    batch = regression_prompts(cfg.n_tasks, N, d, task_rng(seed, NAME))
    context, query, target = batch.context, batch.query, batch.target
    x, y = batch.context_x, batch.context_y  # (B, N, d), (B, N)
    query_alone = query[:, None, :]  # (B, 1, D)
    path = implicit_path(params, config, context, query)
    u, h = lone_token_inputs(params, config, x)

    names = ("finetuned", "implicit", "zero", "one_step_gd", "least_squares")
    losses = {name: [] for name in names}
    alignment, fit_loss, patch_norm, ft_norm = [], [], [], []
    ceiling_row, ceiling, correlation = [], [], []
    for n, i in enumerate(contexts):
        progress.update(f"{NAME}: finetune on i examples", n, len(contexts))
        delta_W_ft, fit = finetune_W(params, config, u[:, :i], h[:, :i], y[:, :i], cfg.lr, cfg.steps)
        patch_ft = (BlockPatch(delta_W_ft, numpy.zeros_like(query)),)
        update = path.update(i)
        prefix = RegressionBatch(numpy.concatenate([context[:, :i], query_alone], axis=1), target, batch.w)
        predictions = {
            "finetuned": predict(params, config, query_alone, patches=patch_ft),
            "implicit": predict(params, config, query_alone, patches=path.patch(i)),
            "zero": zero_predict(prefix),
            "one_step_gd": one_step_gd_predict(prefix, optimal_gd_step(d, i)),
            "least_squares": least_squares_predict(prefix),
        }
        for name, prediction in predictions.items():
            losses[name].append((prediction - target) ** 2)  # (B,)
        alignment.append(cos_frobenius(delta_W_ft, update.delta_W))
        ceiling_row.append(alignment_ceiling(delta_W_ft, update.row))
        ceiling.append(alignment_ceiling(delta_W_ft, update.row, params.blocks[0].mlp.W1))
        if numpy.any(alignment[-1] > ceiling[-1] + 1e-12):
            raise ExperimentError("finetune: cos_F exceeds its ceiling; the ceiling is wrong")
        pair = numpy.stack([predictions["finetuned"], predictions["implicit"]])  # (2, B)
        correlation.append(float(numpy.corrcoef(pair)[0, 1]))  # over the tasks
        fit_loss.append(fit)
        ft_norm.append(numpy.linalg.norm(delta_W_ft, axis=(1, 2)))
        patch_norm.append(numpy.linalg.norm(update.delta_W, axis=(1, 2)))

    def summary(values):  # list over i of (B,) -> mean, se over tasks, (len(contexts),)
        mean, se = mean_se(numpy.stack(values, axis=1), axis=0)
        return {"mean": mean, "se": se}

    curves = {name: summary(values) for name, values in losses.items()}
    align = summary(alignment)
    best = summary(ceiling)
    best_row = summary(ceiling_row)
    last = -1
    headline = {
        f"test_loss_{name}_at_N": float(curves[name]["mean"][last]) for name in names
    }
    headline.update({
        "alignment_at_N": float(align["mean"][last]),
        "alignment_mean_over_i": float(numpy.mean(align["mean"])),
        "alignment_min_over_i": float(numpy.min(align["mean"])),
        "alignment_ceiling_at_N": float(best["mean"][last]),
        "alignment_ceiling_mean_over_i": float(numpy.mean(best["mean"])),
        "alignment_ceiling_row_only_at_N": float(best_row["mean"][last]),
        "prediction_correlation_at_N": correlation[last],
        "prediction_correlation_min_over_i": float(numpy.min(correlation)),
        "fit_loss_finetuned_at_N": float(numpy.mean(fit_loss[last])),
        "context_at_N": contexts[last],
    })
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": ("Figure 4 of v1 (test-loss curves); the finetuning protocol and the"
                  " alignment panel here are this package's own"),
        "config": asdict(cfg),
        "model": model.describe(),
        "headline": headline,
        "data": {
            "i": contexts,
            "test_loss": curves,
            "alignment": align,
            "alignment_ceiling": best,
            "alignment_ceiling_row_only": best_row,
            "prediction_correlation": correlation,
            "fit_loss_finetuned": summary(fit_loss),
            "norm_delta_W_finetuned": summary(ft_norm),
            "norm_delta_W_implicit": summary(patch_norm),
        },
    }


def plot(record: dict, path) -> None:
    fig, axes = new_figure(4, width=6.2, height=4.8, n_rows=2)
    d = record["data"]
    i = numpy.asarray(d["i"])
    cfg = record["config"]
    big = {"label": 12.5, "title": 13.5, "ticks": 11.5, "legend": 10.5}
    floor = 1e-5  # bottom of the loss axis; exact zeros (up to rounding) are drawn there
    styles = {
        "finetuned": ("C0", "-", "o", f"finetuned W ({cfg['steps']} full-batch GD steps)"),
        "implicit": ("C3", "-", "s", r"implicit patch $\Delta W_i$ (= prompt $c_{1..i}, x$)"),
        "zero": ("0.5", ":", None, "zero predictor"),
        "one_step_gd": ("C2", "--", None, r"one GD step from 0, optimal $\eta^*$"),
    }
    ax = axes[0]
    for name, (color, line, marker, label) in styles.items():
        curve = d["test_loss"][name]
        mean, se = numpy.asarray(curve["mean"]), numpy.asarray(curve["se"])
        ax.plot(i, mean, linestyle=line, marker=marker, markersize=4, color=color, label=label)
        ax.fill_between(i, numpy.maximum(mean - se, floor), mean + se, color=color, alpha=0.15,
                        linewidth=0)
    ls = numpy.asarray(d["test_loss"]["least_squares"]["mean"])
    ax.plot(i, numpy.maximum(ls, floor), "kv", markersize=5,
            label="least squares (at the floor: 0 up to rounding)")
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.5, None)
    ax.set_ylabel("test squared error at the query", fontsize=big["label"])
    ax.set_title(f"(a) test loss, mean ± SE over {cfg['n_tasks']} tasks", fontsize=big["title"])
    ax.legend(fontsize=big["legend"], loc="lower left", bbox_to_anchor=(0.0, 0.04))

    ax = axes[1]
    mean, se = numpy.asarray(d["alignment"]["mean"]), numpy.asarray(d["alignment"]["se"])
    ax.plot(i, mean, "o-", markersize=4, color="C4",
            label=r"$\cos_F(\Delta W_{ft}, \Delta W_i)$")
    ax.fill_between(i, mean - se, mean + se, color="C4", alpha=0.25, linewidth=0)
    if "alignment_ceiling" in d:
        best = numpy.asarray(d["alignment_ceiling"]["mean"])
        ax.plot(i, best, "--", color="0.3",
                label="best possible for rank 1 with the row of $\\Delta W_i$\n"
                      "and a column in range$(W)$")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_ylim(min(-0.05, float(numpy.min(mean - se)) - 0.05), 1.05)
    ax.set_ylabel("Frobenius cosine", fontsize=big["label"])
    ax.set_title("(b) alignment of the two updates", fontsize=big["title"])
    ax.legend(fontsize=big["legend"], loc="upper right")

    ax = axes[2]
    norms = (("norm_delta_W_finetuned", "C0", r"$\|\Delta W_{ft}\|_F$ (finetuned)"),
             ("norm_delta_W_implicit", "C3", r"$\|\Delta W_i\|_F$ (implicit)"))
    for key, color, label in norms:
        mean, se = numpy.asarray(d[key]["mean"]), numpy.asarray(d[key]["se"])
        ax.plot(i, mean, "o-", markersize=4, color=color, label=label)
        ax.fill_between(i, mean - se, mean + se, color=color, alpha=0.2, linewidth=0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("Frobenius norm", fontsize=big["label"])
    ax.set_title("(c) size of the two updates", fontsize=big["title"])
    ax.legend(fontsize=big["legend"])

    ax = axes[3]
    if "prediction_correlation" in d:
        ax.plot(i, d["prediction_correlation"], "o-", markersize=4, color="C1")
    ax.set_ylim(min(0.0, float(numpy.min(d.get("prediction_correlation", [0.0])))), 1.02)
    ax.axhline(1.0, color="0.5", linewidth=0.8)
    ax.set_ylabel("correlation over the tasks", fontsize=big["label"])
    ax.set_title("(d) the two predictions at the query, correlated", fontsize=big["title"])

    for ax in axes:
        ax.set_xlabel("examples used $i$", fontsize=big["label"])
        ax.tick_params(labelsize=big["ticks"])
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute Figure 4, write finetune.json and finetune.png into ``out_dir``."""
    return run_experiment(NAME, out_dir, seed, fast, progress, paper_model, compute,
                          finetune_config(fast), plot)
