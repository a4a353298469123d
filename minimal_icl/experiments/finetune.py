"""Figure 4 (v1): explicit finetuning of W on the first i examples against the implicit patch.

For every held-out task and every i = 1..N, two explicit learners. Both train ONLY the
MLP's first weight W, starting from the trained model, on the first i context examples,
each example (x_j, y_j) presented as a query token (x_j; 0) ALONE (no context) with the
label y_j and the squared error of the prediction, (T_W(x_j) − y_j)²:

* full-batch GD (the package's own protocol): 200 gradient steps on
  L(W) = (1/i) Σ_{j≤i} (T_W(x_j) − y_j)², step size lr / mean_j ‖A(x_j)‖²
  (see FinetuneConfig). The result is W + ΔW_ft.
* online SGD (closer to the paper's description, "finetuning on the examples"): ONE pass
  over the examples in their prompt order, one step per example (batch size 1),
  W ← W − η ∇_W (T_W(x_j) − y_j)², η = lr_sgd / s with s = mean ‖A(x)‖² over the lone
  tokens of held-out prompts (a constant of the model) and lr_sgd chosen on those
  held-out prompts from FinetuneConfig.sgd_lr_grid (the value with the smallest mean
  held-out test loss over the figure's i). The weight after the first i steps is the
  update for i; its ΔW_ft is called ΔW_sgd below when the two must be told apart.

and

* implicit: ΔW_i = ΔW(c_1..c_i), the patch of Theorem 2.2 for the test query x and the
  first i context tokens; its test loss is that of T_W(c_1..c_i, x) = T_{W+ΔW_i}(x).

Plotted against i, mean ± SE over the tasks: (a) the test loss of both at the task's
query, with baselines on the same tasks (zero predictor; one GD step on the first i
examples from θ_0 = 0 with the optimal step η* = 1/(1 + (d+1)/i); least squares on the
first i examples, minimum-norm for i < d; for noiseless labels ridge tends to least
squares as λ = σ²/τ² → 0); (b) the alignment cos_F(ΔW_ft, ΔW_i) = ⟨ΔW_ft, ΔW_i⟩_F /
(‖ΔW_ft‖_F ‖ΔW_i‖_F), under its ceiling: ΔW_i = (W δu) aᵀ/‖a‖² has its row along
a = A(x) and its column in range(W), and no matrix of that shape has a larger cos_F
with ΔW_ft than ‖Π_W ΔW_ft a‖/(‖ΔW_ft‖_F ‖a‖), Π_W the orthogonal projector onto
range(W) (``alignment_ceiling``).

Panels: (a) test loss; (b), (c) cos_F of each protocol's update with ΔW_i under the two
ceilings (column in range(W); any column); (d) the norms of the updates; (e) the
correlation over the tasks of the two predictions at the query; (f) the held-out choice
of lr_sgd. Test loss and cos_F are what the paper's Figure 4 compares; both protocols
(lone tokens, only W trained, the step sizes, the grid), the ceilings and panels (d)–(f)
are this package's own: the paper's text on its finetuning (data, steps, learning rate)
could not be recovered, and "one online SGD pass over the demonstrations" is our reading
of its description, not its stated protocol.

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
from ..validation import (
    check_bool,
    check_float_array,
    check_non_negative_int,
    check_params,
    check_positive_float,
    check_single_block,
)
from .common import (
    QUIET,
    ExperimentError,
    Progress,
    check_config_record,
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
              lr / mean_j ‖A(x_j)‖² (A(x_j) the MLP input of the lone example token). The
              loss is a function of W through W A(x_j), so its curvature scales with
              ‖A(x_j)‖², which is small for a lone token (mean ≈ 0.002 for the paper
              model, against a median ≈ 0.12 at the query of a whole prompt, quartiles
              0.03–0.4): a fixed learning rate would crawl for one model and diverge for
              another. The same normalisation as the implicit
              step η_x = 1/‖A(x)‖² of Proposition 3.1. lr = 0.2 is stable for every i; after
              200 steps the loss on the i examples is ≤ 0.015 (labels have variance
              d = 2): the fit is essentially complete.
    steps:    gradient steps for every i (from the trained W each time).
    contexts: the values of i: every i up to 10, then every 5 up to N = 50 (the cost
              of finetuning grows like i; the curves are smooth beyond 10).
    sgd_lr_grid: the online SGD learning rates tried, in units of 1/s, s = mean ‖A(x)‖²
              over the held-out lone tokens: η = lr_sgd / s. ‖A(x)‖² is heavy-tailed
              (up to ≈ 10 s on the paper model's held-out prompts), so one fixed η must
              stay well below 1: the held-out loss rises again at 0.3 (0.64 against 0.53
              at 0.2), and at 0.5 some passes blow up (mean held-out loss ≈ 11, the worst
              ≈ 1e4). The paper model's choice is 0.2.
    sgd_held_out: the held-out prompts (their own random stream, never the test tasks)
              on which lr_sgd is chosen.
    """

    n_tasks: int = 100
    lr: float = 0.2
    steps: int = 200
    contexts: tuple = (*range(1, 11), 15, 20, 25, 30, 35, 40, 45, 50)
    sgd_lr_grid: tuple = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3)
    sgd_held_out: int = 100

    def __post_init__(self) -> None:
        check_config_record(self)


def finetune_config(fast: bool = False) -> FinetuneConfig:
    """The settings; the fast variant takes 50 finetuning steps. fast is True or False."""
    fast = check_bool("fast", fast)
    if fast:
        return FinetuneConfig(steps=50, contexts=(1, 2, 3, 5, 10, 20, 50))
    return FinetuneConfig()


def _check_shape(function: str, name: str, a, want: tuple) -> None:
    """A ValueError naming ``name`` unless ``a`` is an array of shape ``want``, a TypeError
    unless it is real floating point."""
    shape = getattr(a, "shape", None)
    if shape is None or tuple(shape) != want:
        raise ValueError(f"{function}: {name} must have shape {want}, got"
                         f" {type(a).__name__ if shape is None else tuple(shape)}")
    check_float_array(name, a)


def _check_examples(function: str, params, config, u, h, y) -> tuple[int, int]:
    """The one-block model and its lone examples: u, h (B, i, D) with B, i ≥ 1 and
    D = config.d_token, y (B, i). Returns (B, i)."""
    check_params(params, config)
    check_single_block(config, function)
    shape = getattr(u, "shape", None)
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{function}: u must have shape (B, i, D) with B, i ≥ 1, got"
                         f" {type(u).__name__ if shape is None else tuple(shape)}")
    B, i, _ = shape
    _check_shape(function, "u", u, (B, i, config.d_token))
    _check_shape(function, "h", h, (B, i, config.d_token))
    _check_shape(function, "y", y, (B, i))
    return B, i


def lone_token_inputs(params, config, x: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The MLP input u and residual h of the block for each token (x_j; 0) alone.

    x (B, n, d), d = config.d_token − 1. Returns (u (B, n, D), h (B, n, D)).
    """
    check_params(params, config)
    check_single_block(config, "lone_token_inputs")
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3 or min(shape) < 1 or shape[2] != config.d_token - 1:
        raise ValueError(
            f"lone_token_inputs: x must have shape (B, n, d) with B, n ≥ 1 and d ="
            f" config.d_token − 1 = {config.d_token - 1}, got"
            f" {type(x).__name__ if shape is None else tuple(shape)}"
        )
    check_float_array("x", x)
    if not numpy.all(numpy.isfinite(x)):
        raise ValueError("lone_token_inputs: x contains NaN or infinity")
    B, n, d = x.shape
    lone = numpy.concatenate([x, numpy.zeros((B, n, 1), dtype=x.dtype)], axis=-1)
    _, cache = block_forward(lone.reshape(B * n, 1, d + 1), params.blocks[0], config)
    return cache.u.reshape(B, n, d + 1), cache.h.reshape(B, n, d + 1)


def finetune_W(params, config, u: numpy.ndarray, h: numpy.ndarray, y: numpy.ndarray,
               lr: float, steps: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Full-batch gradient descent on each task's own copy of W (the MLP's W1) alone.

    u, h (B, i, D): the lone examples' MLP inputs and residuals; y (B, i): their labels.
    Loss per task: L(W) = (1/i) Σ_j (ŷ_j − y_j)², ŷ_j the last coordinate of the block's
    output (MLP(u_j), plus h_j with an MLP skip). Each task steps by
    W ← W − (lr / mean_j ‖u_j‖²) ∇L(W). Returns (ΔW_ft (B, M, D), the final training
    loss (B,)). lr is finite and > 0, steps an int ≥ 0.
    """
    _check_examples("finetune_W", params, config, u, h, y)
    lr = check_positive_float("lr", lr)
    steps = check_non_negative_int("steps", steps)
    mlp = params.blocks[0].mlp
    B, i, D = u.shape
    scale = numpy.mean(numpy.sum(u * u, axis=-1), axis=1)  # (B,) mean_j ‖u_j‖²
    if numpy.any(scale == 0):
        raise ExperimentError("finetuning: a task's examples all have A(x_j) = 0 (no gradient)")
    step = (lr / scale)[:, None, None]  # (B, 1, 1)
    W = numpy.broadcast_to(mlp.W1, (B, *mlp.W1.shape))  # (B, M, D) one copy per task
    skip = h[..., -1] if config.mlp_skip else 0.0
    for _ in range(steps):
        out, cache = mlp_forward(u, MLPParams(W, mlp.b1, mlp.W2, mlp.b2), config.activation)
        residual = out[..., -1] + skip - y  # (B, i)
        dout = numpy.zeros_like(out)
        dout[..., -1] = (2.0 / i) * residual  # ∂L/∂ŷ_j
        _, grads = mlp_backward(dout, cache)  # grads.W1 (B, M, D): per task
        W = W - step * grads.W1
    out, _ = mlp_forward(u, MLPParams(W, mlp.b1, mlp.W2, mlp.b2), config.activation)
    loss = numpy.mean((out[..., -1] + skip - y) ** 2, axis=1)
    return W - mlp.W1, loss


def online_sgd_W(params, config, u: numpy.ndarray, h: numpy.ndarray, y: numpy.ndarray,
                 step: float, keep) -> numpy.ndarray:
    """One online SGD pass over each task's examples, in order, on its own copy of W (W1).

    u, h (B, n, D): the lone examples' MLP inputs and residuals; y (B, n): their labels;
    step: η > 0; keep: the values of i (1 ≤ i ≤ n) whose update is returned. Step k
    (k = 1..max(keep)) takes W ← W − η ∇_W (ŷ_k − y_k)², ŷ_k the last coordinate of the
    block's output for the lone token (x_k; 0). The weight after the first i steps has seen exactly
    the first i examples, so one pass gives every i. Returns ΔW (len(keep), B, M, D), the
    weight after i steps minus the trained W1.
    """
    B, n = _check_examples("online_sgd_W", params, config, u, h, y)
    try:
        step = check_positive_float("step", step)
    except ValueError as error:  # an ExperimentError, as the figure's other refusals
        raise ExperimentError(f"online SGD: {error}") from None
    if isinstance(keep, (str, bytes)) or not hasattr(keep, "__iter__"):
        raise TypeError(f"online SGD: keep must be a list of ints i (1 ≤ i ≤ {n}), got"
                        f" {type(keep).__name__} {keep!r}")
    keep = tuple(keep)
    if not keep or any(isinstance(i, bool) or not isinstance(i, (int, numpy.integer))
                       or not 1 <= i <= n for i in keep):
        raise ExperimentError(f"online SGD: keep must be ints in 1..{n}, at least one, got {keep}")
    mlp = params.blocks[0].mlp
    W = numpy.broadcast_to(mlp.W1, (B, *mlp.W1.shape))  # (B, M, D) one copy per task
    skip = h[..., -1] if config.mlp_skip else numpy.zeros_like(y)
    kept = {}
    for k in range(max(keep)):
        out, cache = mlp_forward(u[:, k:k + 1], MLPParams(W, mlp.b1, mlp.W2, mlp.b2),
                                 config.activation)
        dout = numpy.zeros_like(out)
        dout[..., -1] = 2.0 * (out[..., -1] + skip[:, k:k + 1] - y[:, k:k + 1])  # ∂/∂ŷ_j
        _, grads = mlp_backward(dout, cache)
        W = W - step * grads.W1
        if k + 1 in keep:
            kept[k + 1] = W - mlp.W1
    return numpy.stack([kept[i] for i in keep])


def fit_loss(params, config, delta_W: numpy.ndarray, u: numpy.ndarray, h: numpy.ndarray,
             y: numpy.ndarray) -> numpy.ndarray:
    """Mean squared error (1/i) Σ_j (ŷ_j − y_j)² of W + ΔW on lone examples, per task.

    delta_W (B, M, D); u, h (B, i, D); y (B, i). Returns (B,).
    """
    B, _ = _check_examples("fit_loss", params, config, u, h, y)
    _check_shape("fit_loss", "delta_W", delta_W, (B, config.d_mlp, config.d_token))
    mlp = params.blocks[0].mlp
    out, _ = mlp_forward(u, MLPParams(mlp.W1 + delta_W, mlp.b1, mlp.W2, mlp.b2),
                         config.activation)
    skip = h[..., -1] if config.mlp_skip else 0.0
    return numpy.mean((out[..., -1] + skip - y) ** 2, axis=1)


def _patched_losses(params, config, delta_Ws, query, target) -> numpy.ndarray:
    """Test squared error at the query of W + ΔW for each ΔW in delta_Ws (n, B, M, D): (n, B)."""
    query_alone = query[:, None, :]
    rows = []
    for delta_W in delta_Ws:
        patch = (BlockPatch(delta_W, numpy.zeros_like(query)),)
        rows.append((predict(params, config, query_alone, patches=patch) - target) ** 2)
    return numpy.stack(rows)


def choose_sgd_lr(params, config, cfg: FinetuneConfig, N: int, d: int, seed: int) -> dict:
    """Choose the online SGD learning rate on held-out prompts (never the test tasks).

    Draws cfg.sgd_held_out prompts from their own stream, sets the unit
    s = mean ‖A(x_j)‖² over their lone tokens, runs one pass for every lr in
    cfg.sgd_lr_grid with η = lr / s, and keeps the lr with the smallest held-out test loss,
    averaged over tasks and over the i of cfg.contexts (a diverging lr scores +inf).
    Returns {"grid", "held_out_loss" (per lr), "lr", "unit" s, "step" η}.
    """
    held_out = regression_prompts(cfg.sgd_held_out, N, d, task_rng(seed, NAME + "/sgd-lr"))
    u, h = lone_token_inputs(params, config, held_out.context_x)
    unit = float(numpy.mean(numpy.sum(u * u, axis=-1)))
    if not unit > 0:
        raise ExperimentError("online SGD: the held-out lone tokens all have A(x) = 0")
    scores = []
    for lr in cfg.sgd_lr_grid:
        with numpy.errstate(all="ignore"):  # a diverging pass overflows: scored +inf below
            delta_Ws = online_sgd_W(params, config, u, h, held_out.context_y, lr / unit,
                                    cfg.contexts)
            score = float(numpy.mean(_patched_losses(params, config, delta_Ws, held_out.query,
                                                     held_out.target)))
        scores.append(score if numpy.isfinite(score) else float("inf"))
    best = int(numpy.argmin(scores))
    if not numpy.isfinite(scores[best]):
        raise ExperimentError(f"online SGD diverged for every lr in {cfg.sgd_lr_grid}")
    lr = float(cfg.sgd_lr_grid[best])
    return {"grid": list(cfg.sgd_lr_grid), "held_out_loss": scores, "lr": lr, "unit": unit,
            "step": lr / unit}


def alignment_ceiling(F: numpy.ndarray, row: numpy.ndarray, W=None) -> numpy.ndarray:
    """The best cos_F(F, c aᵀ) over all columns c for a fixed row a (c in range(W) if W given).

        max_c cos_F(F, c aᵀ) = ‖Π F a‖ / (‖F‖_F ‖a‖),

    Π = I, or the orthogonal projector onto range(W). By Cauchy–Schwarz ⟨F, c aᵀ⟩_F =
    cᵀ(F a) = cᵀ(Π F a) for c in the range of Π, largest for c ∝ Π F a. Every ΔW_i of one
    query has its row along a = A(x) and the column W δu in range(W), so no update of
    that shape aligns with F better than this (docs/theory.md §5).

    F (B, M, D), row a (B, D) (any non-zero multiple: only its direction counts), W (M, D)
    with M ≥ D and full column rank, or None (a W of lower rank gives a ceiling that still
    bounds, but need not be reached). Returns (B,).
    """
    shape = getattr(F, "shape", None)
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"alignment_ceiling: F must have shape (B, M, D), got"
                         f" {type(F).__name__ if shape is None else tuple(shape)}")
    B, M, D = shape
    check_float_array("F", F)
    _check_shape("alignment_ceiling", "row", row, (B, D))
    if W is not None:
        _check_shape("alignment_ceiling", "W", W, (M, D))
    if not (numpy.all(numpy.any(F != 0, axis=(1, 2))) and numpy.all(numpy.any(row != 0, axis=1))):
        raise ValueError("alignment_ceiling: F and row must be non-zero for every prompt"
                         " (a zero has no direction)")
    Fa = numpy.einsum("bmd,bd->bm", F, row)  # (B, M)
    if W is not None:
        basis, _ = numpy.linalg.qr(W)  # (M, D) orthonormal columns: range(W) if rank W = D
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
    if not cfg.sgd_lr_grid or any(not lr > 0 for lr in cfg.sgd_lr_grid):
        raise ExperimentError(f"finetune sgd_lr_grid must be positive, got {cfg.sgd_lr_grid}")
    progress.update(f"{NAME}: choose the online SGD lr on held-out prompts", 0, len(contexts))
    selection = choose_sgd_lr(params, config, cfg, N, d, seed)
    batch = regression_prompts(cfg.n_tasks, N, d, task_rng(seed, NAME))
    context, query, target = batch.context, batch.query, batch.target
    x, y = batch.context_x, batch.context_y  # (B, N, d), (B, N)
    query_alone = query[:, None, :]  # (B, 1, D)
    path = implicit_path(params, config, context, query)
    u, h = lone_token_inputs(params, config, x)
    delta_W_sgd = online_sgd_W(params, config, u, h, y, selection["step"], contexts)
    W1 = params.blocks[0].mlp.W1

    names = ("finetuned", "online_sgd", "implicit", "zero", "one_step_gd", "least_squares")
    protocols = ("finetuned", "online_sgd")
    losses = {name: [] for name in names}
    stats = {p: {key: [] for key in ("alignment", "alignment_ceiling", "alignment_ceiling_row_only",
                                     "norm", "fit_loss")} for p in protocols}
    correlation = {p: [] for p in protocols}
    patch_norm = []
    for n, i in enumerate(contexts):
        progress.update(f"{NAME}: finetune on i examples", n, len(contexts))
        delta_W_ft, fit = finetune_W(params, config, u[:, :i], h[:, :i], y[:, :i], cfg.lr, cfg.steps)
        updates = {"finetuned": delta_W_ft, "online_sgd": delta_W_sgd[n]}
        fits = {"finetuned": fit,
                "online_sgd": fit_loss(params, config, delta_W_sgd[n], u[:, :i], h[:, :i], y[:, :i])}
        update = path.update(i)
        prefix = RegressionBatch(numpy.concatenate([context[:, :i], query_alone], axis=1), target, batch.w)
        predictions = {
            p: predict(params, config, query_alone,
                       patches=(BlockPatch(updates[p], numpy.zeros_like(query)),))
            for p in protocols
        }
        predictions.update({
            "implicit": predict(params, config, query_alone, patches=path.patch(i)),
            "zero": zero_predict(prefix),
            "one_step_gd": one_step_gd_predict(prefix, optimal_gd_step(d, i)),
            "least_squares": least_squares_predict(prefix),
        })
        for name in names:
            losses[name].append((predictions[name] - target) ** 2)  # (B,)
        for p in protocols:
            F = updates[p]
            cos = cos_frobenius(F, update.delta_W)
            ceiling = alignment_ceiling(F, update.row, W1)
            if numpy.any(cos > ceiling + 1e-12):
                raise ExperimentError("finetune: cos_F exceeds its ceiling; the ceiling is wrong")
            stats[p]["alignment"].append(cos)
            stats[p]["alignment_ceiling"].append(ceiling)
            stats[p]["alignment_ceiling_row_only"].append(alignment_ceiling(F, update.row))
            stats[p]["norm"].append(numpy.linalg.norm(F, axis=(1, 2)))
            stats[p]["fit_loss"].append(fits[p])
            pair = numpy.stack([predictions[p], predictions["implicit"]])  # (2, B)
            correlation[p].append(float(numpy.corrcoef(pair)[0, 1]))  # over the tasks
        patch_norm.append(numpy.linalg.norm(update.delta_W, axis=(1, 2)))

    def summary(values):  # list over i of (B,) -> mean, se over tasks, (len(contexts),)
        mean, se = mean_se(numpy.stack(values, axis=1), axis=0)
        return {"mean": mean, "se": se}

    curves = {name: summary(values) for name, values in losses.items()}
    per = {p: {key: summary(values) for key, values in stats[p].items()} for p in protocols}
    last = -1
    headline = {
        f"test_loss_{name}_at_N": float(curves[name]["mean"][last]) for name in names
    }
    for p, tag in (("finetuned", ""), ("online_sgd", "_online_sgd")):
        align, best, best_row = (per[p][key]["mean"] for key in
                                 ("alignment", "alignment_ceiling", "alignment_ceiling_row_only"))
        headline.update({
            f"alignment{tag}_at_N": float(align[last]),
            f"alignment{tag}_mean_over_i": float(numpy.mean(align)),
            f"alignment{tag}_min_over_i": float(numpy.min(align)),
            f"alignment_ceiling{tag}_at_N": float(best[last]),
            f"alignment_ceiling{tag}_mean_over_i": float(numpy.mean(best)),
            f"alignment_ceiling_row_only{tag}_at_N": float(best_row[last]),
            f"prediction_correlation{tag}_at_N": correlation[p][last],
            f"prediction_correlation{tag}_min_over_i": float(numpy.min(correlation[p])),
        })
    headline.update({
        "fit_loss_finetuned_at_N": float(per["finetuned"]["fit_loss"]["mean"][last]),
        "fit_loss_online_sgd_at_N": float(per["online_sgd"]["fit_loss"]["mean"][last]),
        "online_sgd_lr": selection["lr"],
        "online_sgd_step": selection["step"],
        "context_at_N": contexts[last],
    })
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": ("Figure 4 of v1 (test-loss curves); both finetuning protocols and the"
                  " alignment panels here are this package's own (the paper's protocol"
                  " could not be recovered; online SGD is our reading of its description)"),
        "config": asdict(cfg),
        "model": model.describe(),
        "headline": headline,
        "data": {
            "i": contexts,
            "test_loss": curves,
            "alignment": per["finetuned"]["alignment"],
            "alignment_ceiling": per["finetuned"]["alignment_ceiling"],
            "alignment_ceiling_row_only": per["finetuned"]["alignment_ceiling_row_only"],
            "prediction_correlation": correlation["finetuned"],
            "fit_loss_finetuned": per["finetuned"]["fit_loss"],
            "norm_delta_W_finetuned": per["finetuned"]["norm"],
            "norm_delta_W_implicit": summary(patch_norm),
            "online_sgd": {
                "alignment": per["online_sgd"]["alignment"],
                "alignment_ceiling": per["online_sgd"]["alignment_ceiling"],
                "alignment_ceiling_row_only": per["online_sgd"]["alignment_ceiling_row_only"],
                "prediction_correlation": correlation["online_sgd"],
                "fit_loss": per["online_sgd"]["fit_loss"],
                "norm_delta_W": per["online_sgd"]["norm"],
                "lr_selection": selection,
            },
        },
    }


def _band(ax, i, curve, color, marker, label, line="-", floor=None):
    mean, se = numpy.asarray(curve["mean"]), numpy.asarray(curve["se"])
    low = mean - se if floor is None else numpy.maximum(mean - se, floor)
    ax.plot(i, mean, linestyle=line, marker=marker, markersize=5, color=color, label=label)
    ax.fill_between(i, low, mean + se, color=color, alpha=0.15, linewidth=0)


def plot(record: dict, path) -> None:
    fig, axes = new_figure(6, width=6.0, height=4.7, n_rows=2)
    d = record["data"]
    i = numpy.asarray(d["i"])
    cfg = record["config"]
    sgd = d["online_sgd"]
    chosen = sgd["lr_selection"]["lr"]
    big = {"label": 13, "title": 14, "ticks": 12, "legend": 11}
    floor = 1e-5  # bottom of the loss axis; exact zeros (up to rounding) are drawn there
    gd_label = f"full-batch GD, {cfg['steps']} steps (ours)"
    sgd_label = f"one online SGD pass (lr {chosen:g}, held-out)"
    colors = {"finetuned": "C0", "online_sgd": "C1", "implicit": "C3"}

    ax = axes[0]
    styles = {
        "finetuned": ("C0", "-", "o", gd_label),
        "online_sgd": ("C1", "-", "^", sgd_label),
        "implicit": ("C3", "-", "s", r"implicit patch $\Delta W_i$"),
        "zero": ("0.5", ":", None, "zero predictor"),
        "one_step_gd": ("C2", "--", None, r"one GD step from 0, $\eta^*$"),
    }
    for name, (color, line, marker, label) in styles.items():
        _band(ax, i, d["test_loss"][name], color, marker, label, line, floor)
    ls = numpy.asarray(d["test_loss"]["least_squares"]["mean"])
    ax.plot(i, numpy.maximum(ls, floor), "kv", markersize=5, label="least squares (0: at floor)")
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.5, None)
    ax.set_ylabel("test squared error at the query", fontsize=big["label"])
    ax.set_title(f"(a) test loss, mean ± SE, {cfg['n_tasks']} tasks", fontsize=big["title"])
    ax.legend(fontsize=big["legend"] - 1, loc="lower left")

    panels = (("finetuned", d, "(b) full-batch GD: alignment", gd_label),
              ("online_sgd", sgd, "(c) online SGD: alignment", sgd_label))
    for ax, (p, source, title, _) in zip(axes[1:3], panels):
        _band(ax, i, source["alignment"], colors[p], "o",
              r"$\cos_F(\Delta W_{ft}, \Delta W_i)$")
        ax.plot(i, source["alignment_ceiling"]["mean"], "--", color="0.2", linewidth=1.6,
                label=r"ceiling, row $A(x)$, column in range$(W)$")
        ax.plot(i, source["alignment_ceiling_row_only"]["mean"], ":", color="0.2", linewidth=1.8,
                label=r"ceiling, row $A(x)$, any column")
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_ylim(-0.1, 1.05)
        ax.set_ylabel("Frobenius cosine", fontsize=big["label"])
        ax.set_title(title, fontsize=big["title"])
        ax.legend(fontsize=big["legend"], loc="upper right")

    ax = axes[3]
    norms = ((d["norm_delta_W_finetuned"], "C0", "o", "full-batch GD"),
             (sgd["norm_delta_W"], "C1", "^", "online SGD"),
             (d["norm_delta_W_implicit"], "C3", "s", r"implicit $\Delta W_i$"))
    for curve, color, marker, label in norms:
        _band(ax, i, curve, color, marker, label)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("Frobenius norm of the update", fontsize=big["label"])
    ax.set_title("(d) size of the updates", fontsize=big["title"])
    ax.legend(fontsize=big["legend"])

    ax = axes[4]
    ax.plot(i, d["prediction_correlation"], "o-", markersize=5, color="C0", label="full-batch GD")
    ax.plot(i, sgd["prediction_correlation"], "^-", markersize=5, color="C1", label="online SGD")
    low = min(d["prediction_correlation"] + sgd["prediction_correlation"])
    ax.set_ylim(min(0.0, float(low)) - 0.02, 1.02)
    ax.axhline(1.0, color="0.5", linewidth=0.8)
    ax.set_ylabel("correlation with the implicit one", fontsize=big["label"])
    ax.set_title("(e) predictions at the query, over tasks", fontsize=big["title"])
    ax.legend(fontsize=big["legend"], loc="lower right")

    ax = axes[5]
    sel = sgd["lr_selection"]
    grid, score = numpy.asarray(sel["grid"]), numpy.asarray(sel["held_out_loss"], dtype=float)
    finite = numpy.isfinite(score)
    ax.plot(grid[finite], score[finite], "^-", color="C1", markersize=6)
    ax.plot([chosen], [score[list(grid).index(chosen)]], "k*", markersize=14, label=f"chosen: {chosen:g}")
    ax.set_xscale("log")
    ax.set_xticks(grid[finite], [f"{lr:g}" for lr in grid[finite]])
    ax.minorticks_off()
    ax.set_xlabel(r"online SGD lr (units of $1/\mathrm{mean}\,\|A(x)\|^2$)", fontsize=big["label"])
    ax.set_ylabel("held-out test loss, mean over i", fontsize=big["label"])
    ax.set_title(f"(f) choosing lr on {cfg['sgd_held_out']} held-out prompts", fontsize=big["title"])
    ax.legend(fontsize=big["legend"])

    for ax in axes[:5]:
        ax.set_xlabel("examples used $i$", fontsize=big["label"])
    for ax in axes:
        ax.tick_params(labelsize=big["ticks"])
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute Figure 4, write finetune.json and finetune.png into ``out_dir``."""
    return run_experiment(NAME, out_dir, seed, fast, progress, paper_model, compute,
                          finetune_config(fast), plot)
