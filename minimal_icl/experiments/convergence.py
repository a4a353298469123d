"""Figure 3 (v1): the implicit updates converge as the context grows, and why.

For the first i context tokens the patch is ΔW_i = ΔW(c_1..c_i) (Theorem 2.2), and
Proposition 3.1 makes W_i = W + ΔW_i a gradient path. The figure plots the increment of
that path (the size of its change, not its step size η_x),

    ‖ΔW_{i+1} − ΔW_i‖_F = ‖W (A_{i+1} − A_i)‖ / ‖A(x)‖,

against the context length i on log-log axes, mean ± standard error over held-out tasks.
The paper shows the decay for its trained model. We add two controls it lacks
(docs/theory.md §4): the same architecture with untrained random weights, and un-normalised
linear attention with random weights. A new token gets softmax weight ≈ 1/(i+2) (i + 1
context tokens and the query share it), so the increments shrink like 1/i even with random
weights; linear attention does not renormalise and its increments do not shrink. The
fitted log-log slope of each curve is in the legend.

The package's own addition (docs/theory.md §8): a trained recurrent block
(``models.rnn_setting``), whose context enters through a tanh recurrence, not an average.
Its increments neither decay like 1/i nor settle: they stay at their early size
(log-log slope ≈ 0) and jump from token to token around a constant level (headline:
the median over prompts of the standard deviation of a prompt's increments along i
relative to their mean, ≈ 0.45 for seed 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy

from ..data import regression_prompts
from ..dynamics import implicit_path
from ..params import init_params
from ..validation import check_bool
from .common import (
    QUIET,
    Progress,
    check_config_record,
    loglog_slope,
    mean_se,
    new_figure,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import paper_model, rnn_model

NAME = "convergence"
TITLE = "Figure 3: the increments ‖ΔW_{i+1} − ΔW_i‖ of the implicit path shrink with i"


@dataclass(frozen=True)
class ConvergenceConfig:
    """Our choices for Figure 3 (the paper gives its task count only).

    n_tasks:   held-out prompts (tasks), one fresh w each; curves are mean ± SE over them.
    fit_from:  the log-log slope is fitted to the mean curve over i = fit_from..N−1
               (the first few steps carry the query's own attention weight).
    """

    n_tasks: int = 100
    fit_from: int = 5

    def __post_init__(self) -> None:
        check_config_record(self, ("fit_from",))


def convergence_config(fast: bool = False) -> ConvergenceConfig:
    """The settings; the fast variant differs only in the (briefly trained) model."""
    fast = check_bool("fast", fast)
    return ConvergenceConfig()


def step_norms(params, config, context, query) -> numpy.ndarray:
    """‖ΔW_{i+1} − ΔW_i‖_F for i = 0..N−1, every prompt: (B, N), from ``implicit_path``."""
    return numpy.asarray(implicit_path(params, config, context, query).increment_norms)


def compute(model, cfg: ConvergenceConfig, seed: int, progress: Progress = QUIET,
            rnn=None) -> dict:
    """The three curves and their slopes, as a JSON-ready record; with ``rnn`` (a trained
    recurrent block, ``models.rnn_model``) a fourth curve, "trained_rnn"."""
    config, setup = model.config, model.setup
    batch = regression_prompts(cfg.n_tasks, setup.n_context, setup.d, task_rng(seed, NAME))
    context, query = batch.context, batch.query
    linear_config = replace(config, attention="linear")
    models = {
        "trained_softmax": ("trained softmax (paper model)", model.params, config),
        "random_softmax": ("untrained softmax", init_params(config, seed=seed + 1), config),
        "random_linear": ("untrained linear attention", init_params(linear_config, seed=seed + 1),
                          linear_config),
    }
    if rnn is not None:
        models["trained_rnn"] = ("trained recurrent block (package's own)", rnn.params,
                                 rnn.config)
    N = setup.n_context
    i = numpy.arange(1, N)  # the step from i to i + 1 tokens; i = 0 is left out (log axis)
    fit = i >= cfg.fit_from
    curves = {}
    for key, (label, params, cfg_model) in models.items():
        progress.update(f"{NAME}: {label}")
        norms = step_norms(params, cfg_model, context, query)[:, 1:]  # (B, N−1)
        mean, se = mean_se(norms, axis=0)
        slope = loglog_slope(i[fit], mean[fit])
        curves[key] = {"label": label, "mean": mean, "se": se, "slope": slope,
                       "attention": cfg_model.attention,
                       "contextual_layer": cfg_model.contextual_layer,
                       "ratio_first_last": float(mean[0] / mean[-1])}
        if key == "trained_rnn":  # no trend: how much each prompt's increments fluctuate
            tail = norms[:, fit]  # (B, n_fit)
            curves[key]["spread_along_i"] = float(numpy.median(tail.std(1) / tail.mean(1)))
    headline = {f"slope_{k}": c["slope"] for k, c in curves.items()}
    headline.update({f"ratio_first_last_{k}": c["ratio_first_last"] for k, c in curves.items()})
    if "trained_rnn" in curves:
        headline["spread_along_i_trained_rnn"] = curves["trained_rnn"]["spread_along_i"]
    # how far apart the trained and untrained softmax curves sit (same slope, other level)
    level = numpy.asarray(curves["trained_softmax"]["mean"]) / curves["random_softmax"]["mean"]
    headline.update({"ratio_trained_to_untrained_softmax_median": float(numpy.median(level)),
                     "ratio_trained_to_untrained_softmax_min": float(numpy.min(level)),
                     "ratio_trained_to_untrained_softmax_max": float(numpy.max(level))})
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": "Figure 3 of v1 (trained model only; no slope reported)",
        "config": asdict(cfg),
        "model": model.describe(),
        "rnn_model": None if rnn is None else rnn.describe(),
        "controls_seed": seed + 1,
        "headline": headline,
        "data": {"i": i, "curves": curves},
    }


def plot(record: dict, path) -> None:
    fig, (ax,) = new_figure(1, width=6.4, height=4.4)
    data = record["data"]
    i = numpy.asarray(data["i"])
    colors = {"trained_softmax": "C0", "random_softmax": "C1", "random_linear": "C2",
              "trained_rnn": "C3"}
    for key, curve in data["curves"].items():
        mean, se = numpy.asarray(curve["mean"]), numpy.asarray(curve["se"])
        ax.plot(i, mean, color=colors[key], label=f"{curve['label']}  (slope {curve['slope']:+.2f})")
        ax.fill_between(i, numpy.maximum(mean - se, mean * 1e-3), mean + se, color=colors[key],
                        alpha=0.25, linewidth=0)
    # a 1/i line through the untrained-softmax curve at the middle of the fitted range, halved
    anchor = len(i) // 2
    ref = 0.5 * numpy.asarray(data["curves"]["random_softmax"]["mean"])[anchor] * i[anchor] / i
    ax.plot(i, ref, color="0.4", linestyle=":", label=r"$\propto 1/i$ (reference)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("context length $i$ (tokens already consumed)")
    ax.set_ylabel(r"$\|\Delta W_{i+1} - \Delta W_i\|_F$")
    n = record["config"]["n_tasks"]
    ax.set_title(f"Increments of the implicit path vs context length (mean ± SE, {n} tasks)")
    ax.legend(loc="lower left")
    ax.grid(True, which="both", alpha=0.25)
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute Figure 3, write convergence.json and convergence.png into ``out_dir``."""

    def load(out, seed, fast, progress):  # the paper's model and the recurrent block
        return paper_model(out, seed, fast, progress), rnn_model(out, seed, fast, progress)

    def compute_both(models, cfg, seed, progress):
        return compute(models[0], cfg, seed, progress, rnn=models[1])

    return run_experiment(NAME, out_dir, seed, fast, progress, load, compute_both,
                          convergence_config(fast), plot)
