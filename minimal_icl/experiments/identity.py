"""Figure 2 (v1): the prompt and the patched query alone agree, during and after training.

Theorem 2.2 (Y = C): T_W(C, x) = T_{W+ΔW}(x), ΔW = (W ΔA) A(x)ᵀ / ‖A(x)‖², for any
weights. The figure shows

(a) the training loss, and the held-out loss computed two ways at every validation step:
    with the prompt, T_W(C, x), and with the query alone and the patch, T_{W+ΔW}(x)
    (they overlap: the identity holds at every point of training, not only at the end);
(b) a close-up of the two held-out curves;
(c) for the trained model, |T_W(C, x) − T_{W+ΔW}(x)| over a grid of query inputs
    x_q ∈ [−3, 3]² (its two coordinates drawn as x1, x2), averaged over held-out tasks
    (contexts), in float64;
(d) the same with the parameters and the data cast to float32.

At x_q = 0 the query token x = (x_q; 0) is zero: alone, it attends to itself only, so
A(x) = W_O W_V x = 0 (the attention has no biases) and no update exists (the theorem
divides by ‖A(x)‖²); that grid point is left out and drawn grey.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import numpy

from ..backend import to_device
from ..data import prompt_tokens, regression_prompts
from ..model import predict
from ..tolerances import FLOAT32_RTOL, IDENTITY_RTOL
from ..train import compare_with_baselines
from ..validation import check_bool
from .common import (
    QUIET,
    Progress,
    check_config_record,
    heldout_table,
    moving_average,
    new_figure,
    plain_log_ticks,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import paper_model, patched_predict

NAME = "identity"
TITLE = "Figure 2: the prompt T_W(C, x) and the patched query T_{W+ΔW}(x) agree"


@dataclass(frozen=True)
class IdentityConfig:
    """Our choices for Figure 2 (the paper does not give its grid or task count).

    n_tasks:      held-out contexts C (tasks) the grid differences are averaged over.
    grid_half:    the grid has 2·grid_half + 1 points per axis (41 × 41), spanning
    grid_limit:   [−grid_limit, grid_limit]² (x_q = 0 is a grid point and is left out).
    n_heldout:    new prompts for the final comparison with the baselines.
    chunk:        prompts per batch of work (memory bound).
    smooth:       the training loss is drawn as a moving average over this many steps.
    """

    n_tasks: int = 100
    grid_half: int = 20
    grid_limit: float = 3.0
    n_heldout: int = 10_000
    chunk: int = 8192
    smooth: int = 200

    def __post_init__(self) -> None:
        check_config_record(self)


def identity_config(fast: bool = False) -> IdentityConfig:
    """The settings; the fast variant uses 20 tasks and a smaller grid. fast is True or False."""
    fast = check_bool("fast", fast)
    if fast:
        return IdentityConfig(n_tasks=20, grid_half=5, n_heldout=2000, smooth=20)
    return IdentityConfig()


def grid_queries(cfg: IdentityConfig) -> tuple[numpy.ndarray, numpy.ndarray]:
    """The grid axis (G,) and the query inputs x_q (G·G, 2), row-major: the second
    coordinate x2 indexes the rows, the first x1 runs fastest."""
    axis = numpy.arange(-cfg.grid_half, cfg.grid_half + 1) * (cfg.grid_limit / cfg.grid_half)
    x2, x1 = numpy.meshgrid(axis, axis, indexing="ij")
    return axis, numpy.stack([x1.ravel(), x2.ravel()], axis=1)


def grid_differences(params, config, context: numpy.ndarray, queries: numpy.ndarray,
                     chunk: int, progress: Progress = QUIET, label: str = "") -> tuple:
    """|T_W(C, x) − T_{W+ΔW}(x)| for every context (task) and every query.

    context (n_tasks, N, D) in the dtype to test, queries: the query inputs x_q (Q, d),
    none of them 0 (not checked here: A(x) = 0 has no update). Returns (the differences
    (n_tasks, Q), the predictions with the prompt (n_tasks, Q)), as float64 NumPy.
    """
    S, N, D = context.shape
    Q = queries.shape[0]
    per_chunk = max(1, chunk // Q)  # tasks per chunk
    diffs, preds = [], []
    for start in range(0, S, per_chunk):
        progress.update(f"{NAME}: grid {label}", start, S)
        tasks = context[start:start + per_chunk]  # (s, N, D)
        s = tasks.shape[0]
        ctx = numpy.repeat(tasks, Q, axis=0)  # (s·Q, N, D)
        qx = numpy.tile(queries, (s, 1)).astype(context.dtype)  # (s·Q, d)
        tokens = prompt_tokens(ctx[:, :, :-1], ctx[:, :, -1], qx)  # (s·Q, N+1, D)
        with_prompt = predict(params, config, tokens)
        patched = patched_predict(params, config, tokens, chunk=chunk)
        diffs.append(numpy.abs(with_prompt - patched).astype(numpy.float64).reshape(s, Q))
        preds.append(with_prompt.astype(numpy.float64).reshape(s, Q))
    return numpy.concatenate(diffs), numpy.concatenate(preds)


def compute(model, cfg: IdentityConfig, seed: int, progress: Progress = QUIET) -> dict:
    params, config, setup, history = model.params, model.config, model.setup, model.history
    axis, queries = grid_queries(cfg)
    G = axis.shape[0]
    origin = numpy.all(queries == 0.0, axis=1)  # A(x) = 0 there: no update exists
    usable = queries[~origin]
    batch = regression_prompts(cfg.n_tasks, setup.n_context, setup.d, task_rng(seed, NAME))
    context = numpy.asarray(batch.context)

    heatmaps, headline = {}, {}
    for name, dtype in (("float64", numpy.float64), ("float32", numpy.float32)):
        cast_params = to_device(params, "numpy", dtype=dtype)
        diff, pred = grid_differences(cast_params, config, context.astype(dtype), usable, cfg.chunk,
                                      progress, name)
        mean_map = numpy.full(G * G, numpy.nan)
        mean_map[~origin] = numpy.mean(diff, axis=0)  # averaged over tasks
        heatmaps[name] = mean_map.reshape(G, G)
        scale = float(numpy.max(numpy.abs(pred)))
        headline[f"max_abs_difference_{name}"] = float(numpy.max(diff))
        headline[f"mean_abs_difference_{name}"] = float(numpy.mean(diff))
        headline[f"max_relative_difference_{name}"] = float(numpy.max(diff)) / scale
        headline[f"prediction_scale_{name}"] = scale

    val_step = numpy.asarray(history["val_step"])
    val_loss = numpy.asarray(history["val_loss"])
    val_patched = numpy.asarray(history["val_loss_patched"])
    train_loss = numpy.asarray(history["train_loss"])
    progress.update(f"{NAME}: baselines on {cfg.n_heldout} new prompts")
    table = heldout_table(compare_with_baselines(params, setup, n_prompts=cfg.n_heldout, seed=seed))
    last = max(1, min(cfg.smooth, train_loss.shape[0]))
    headline.update({
        "final_train_loss_mean_last_steps": float(numpy.mean(train_loss[-last:])),
        "final_val_loss_prompt": float(val_loss[-1]),
        "final_val_loss_patched": float(val_patched[-1]),
        "max_abs_val_loss_difference": float(numpy.max(numpy.abs(val_loss - val_patched))),
        "heldout_mse": table["mse"],
        "heldout_se": table["se"],
        "heldout_excess_over_model": table["excess"],
        "heldout_excess_over_model_se": table["excess_se"],
    })
    train_step, smoothed = moving_average(train_loss, cfg.smooth)
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": ("Figure 2 of v1: the two validation curves overlap; the float32 difference the"
                  " paper shows is not verified here"),
        "config": asdict(cfg),
        "model": model.describe(),
        "headline": headline,
        "tolerances": {"IDENTITY_RTOL": IDENTITY_RTOL, "FLOAT32_RTOL": FLOAT32_RTOL},
        "data": {
            "train_step": train_step,  # thinned to ≤ 1000 points
            "train_loss_smoothed": smoothed,
            "val_step": val_step,
            "val_loss_prompt": val_loss,
            "val_loss_patched": val_patched,
            "grid_axis": axis,
            "excluded_query": [0.0, 0.0],
            # heatmaps[x2 index][x1 index]; None marks the excluded query x = 0
            "heatmap_float64": [[None if numpy.isnan(v) else v for v in row]
                                for row in heatmaps["float64"]],
            "heatmap_float32": [[None if numpy.isnan(v) else v for v in row]
                                for row in heatmaps["float32"]],
        },
    }


def _heatmap(fig, ax, record, name: str, title: str) -> None:
    import matplotlib.colors as colors

    data = record["data"]
    values = numpy.array([[numpy.nan if v is None else v for v in row]
                          for row in data[f"heatmap_{name}"]], dtype=float)
    axis = numpy.asarray(data["grid_axis"])
    step = axis[1] - axis[0]
    extent = (axis[0] - step / 2, axis[-1] + step / 2, axis[0] - step / 2, axis[-1] + step / 2)
    positive = values[numpy.isfinite(values) & (values > 0)]
    low = positive.min() if positive.size else 1e-18
    high = max(positive.max() if positive.size else 1e-17, low * 10)
    shown = numpy.where(values == 0.0, low, values)  # exact zeros at the bottom of the scale
    cmap = __import__("matplotlib").colormaps["viridis"].with_extremes(bad="0.6")
    image = ax.imshow(numpy.ma.masked_invalid(shown), origin="lower", extent=extent, cmap=cmap,
                      norm=colors.LogNorm(vmin=low, vmax=high), interpolation="nearest")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(r"mean $|T_W(C,x) - T_{W+\Delta W}(x)|$")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    head = record["headline"]
    ax.set_title(f"{title}\nmax {head[f'max_abs_difference_{name}']:.1e}  "
                 f"(grey: x = 0, no update)")


def _thousands(value, _position) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def plot(record: dict, path) -> None:
    from matplotlib.ticker import FuncFormatter

    fig, axes = new_figure(4, width=5.2, height=4.0, n_rows=2)
    d, head = record["data"], record["headline"]
    n_tasks = record["config"]["n_tasks"]

    ax = axes[0]
    ax.plot(d["train_step"], d["train_loss_smoothed"], color="0.55", linewidth=1,
            label=f"train loss (moving average, {record['config']['smooth']} steps)")
    ax.plot(d["val_step"], d["val_loss_prompt"], "-", color="C0", linewidth=2,
            label=r"held-out, with prompt $T_W(C, x)$")
    ax.plot(d["val_step"], d["val_loss_patched"], "o", color="C3", markersize=4, mfc="none",
            label=r"held-out, query + patch $T_{W+\Delta W}(x)$")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_xlabel("training step")
    ax.set_ylabel("mean squared error")
    ax.set_title("(a) training, held-out loss computed two ways")
    ax.legend()

    ax = axes[1]
    val_step = numpy.asarray(d["val_step"])
    tail = val_step >= val_step[-1] // 2
    ax.plot(val_step[tail], numpy.asarray(d["val_loss_prompt"])[tail], "-", color="C0", linewidth=2,
            label=r"with prompt $T_W(C, x)$")
    ax.plot(val_step[tail], numpy.asarray(d["val_loss_patched"])[tail], "o", color="C3",
            markersize=5, mfc="none", label=r"query + patch $T_{W+\Delta W}(x)$")
    ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out mean squared error")
    ax.set_title(f"(b) close-up: max |difference| over training "
                 f"{head['max_abs_val_loss_difference']:.1e}")
    ax.legend()

    _heatmap(fig, axes[2], record, "float64", f"(c) float64, mean over {n_tasks} tasks")
    _heatmap(fig, axes[3], record, "float32", f"(d) float32, mean over {n_tasks} tasks")
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute Figure 2, write identity.json and identity.png into ``out_dir``."""
    # training records the held-out loss both ways: with the prompt and patched
    load_model = partial(paper_model, need_patched_history=True)
    return run_experiment(NAME, out_dir, seed, fast, progress, load_model, compute,
                          identity_config(fast), plot)
