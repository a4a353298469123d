"""Figure 5 (later versions): a stack of pre-LN blocks, one rank-1 patch per block.

For a stack of L blocks the patches are computed block by block (docs/theory.md §3): block
l's ΔW_l (on its W1) and Δb′_l = h_C − h_∅ (on its MLP output bias b′: the change of the
residual stream that the MLP skip carries past the MLP) use the with-context
representations that block l − 1 outputs. Running the query ALONE
through the L patched blocks then reproduces, block by block, the query's output with
the whole prompt. The figure shows, for each block l, the norm of the difference

    ‖ block_l output at the query, with context  −  the same, query alone and patched ‖,

mean ± SE over held-out tasks (below 1e-15 on average, 2e-15 at most for seed 0:
rounding), next to the size of what the context changes (the same difference without
the patches: 6–9 for seed 0), and the training curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy

from ..data import regression_prompts
from ..implicit import implicit_update
from ..model import forward
from ..tolerances import IDENTITY_RTOL
from ..train import compare_with_baselines
from ..validation import check_bool
from .common import (
    QUIET,
    Progress,
    check_config_record,
    heldout_table,
    mean_se,
    moving_average,
    new_figure,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import deep_model

NAME = "deep"
TITLE = "Figure 5: per-block patches reproduce a 4-block pre-LN transformer exactly"


@dataclass(frozen=True)
class DeepConfig:
    """Our choices for the deep figure (the model's are in ``models.deep_setting``).

    n_tasks:   held-out prompts the per-block differences are averaged over.
    n_heldout: new prompts for the comparison of the trained stack with the baselines.
    smooth:    the training loss is drawn as a moving average over this many steps.
    """

    n_tasks: int = 100
    n_heldout: int = 4000
    smooth: int = 50

    def __post_init__(self) -> None:
        check_config_record(self)


def deep_config(fast: bool = False) -> DeepConfig:
    """The settings; the fast variant uses 500 held-out prompts. fast is True or False."""
    fast = check_bool("fast", fast)
    if fast:
        return DeepConfig(n_heldout=500, smooth=10)
    return DeepConfig()


def block_outputs(out, cache) -> list:
    """Each block's output at the last position: [(B, D)] * L (block l+1's input is block
    l's output; the last block's is ``out``)."""
    return [z[:, -1, :] for z in cache.inputs[1:]] + [out[:, -1, :]]


def compute(model, cfg: DeepConfig, seed: int, progress: Progress = QUIET) -> dict:
    params, config, setup, history = model.params, model.config, model.setup, model.history
    batch = regression_prompts(cfg.n_tasks, setup.n_context, setup.d, task_rng(seed, NAME))
    context, query = batch.context, batch.query
    query_alone = query[:, None, :]  # (B, 1, D)

    progress.update(f"{NAME}: per-block patches")
    updates = implicit_update(params, config, context, query)
    with_context = block_outputs(*forward(params, config, batch.tokens, last_only=True))
    patched = block_outputs(*forward(params, config, query_alone, patches=updates))
    alone = block_outputs(*forward(params, config, query_alone))

    blocks = []
    for l in range(config.n_blocks):
        diff = numpy.linalg.norm(with_context[l] - patched[l], axis=-1)  # (B,)
        effect = numpy.linalg.norm(with_context[l] - alone[l], axis=-1)  # (B,)
        scale = numpy.linalg.norm(with_context[l], axis=-1)  # (B,)
        diff_mean, diff_se = mean_se(diff)
        effect_mean, effect_se = mean_se(effect)
        blocks.append({
            "block": l + 1,
            "difference_mean": diff_mean, "difference_se": diff_se,
            "difference_max": float(numpy.max(diff)),
            "relative_difference_max": float(numpy.max(diff / scale)),
            "context_effect_mean": effect_mean, "context_effect_se": effect_se,
            "rank_delta_W": int(max(numpy.linalg.matrix_rank(updates[l].delta_W))),
        })

    progress.update(f"{NAME}: baselines on {cfg.n_heldout} new prompts")
    table = heldout_table(compare_with_baselines(params, setup, n_prompts=cfg.n_heldout, seed=seed))
    train_loss = numpy.asarray(history["train_loss"])
    train_step, smoothed = moving_average(train_loss, cfg.smooth)
    headline = {
        "max_difference": max(b["difference_max"] for b in blocks),
        "max_relative_difference": max(b["relative_difference_max"] for b in blocks),
        "mean_difference_per_block": [b["difference_mean"] for b in blocks],
        "mean_context_effect_per_block": [b["context_effect_mean"] for b in blocks],
        "max_rank_delta_W": max(b["rank_delta_W"] for b in blocks),
        "final_val_loss": float(numpy.asarray(history["val_loss"])[-1]),
        "heldout_mse": table["mse"],
        "heldout_se": table["se"],
        "heldout_excess_over_model": table["excess"],
        "heldout_excess_over_model_se": table["excess_se"],
    }
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": "Figure 5 of later versions (not in v1); no number quoted here",
        "config": asdict(cfg),
        "model": model.describe(),
        "headline": headline,
        "tolerances": {"IDENTITY_RTOL": IDENTITY_RTOL},
        "data": {
            "blocks": blocks,
            "train_step": train_step,
            "train_loss_smoothed": smoothed,
            "val_step": history["val_step"],
            "val_loss": history["val_loss"],
        },
    }


def plot(record: dict, path) -> None:
    fig, axes = new_figure(2, width=5.4, height=4.2)
    d, cfg = record["data"], record["config"]
    setup = record["model"]["setup"]

    ax = axes[0]
    ax.plot(d["train_step"], d["train_loss_smoothed"], color="0.55", linewidth=1,
            label=f"train loss (moving average, {cfg['smooth']} steps)")
    ax.plot(d["val_step"], d["val_loss"], "o-", color="C0", markersize=3, label="held-out loss")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean squared error")
    c = setup["config"]
    ax.set_title(f"(a) training: {c['n_blocks']} pre-LN blocks, both skips, {c['activation']} MLP")
    ax.legend()

    ax = axes[1]
    blocks = d["blocks"]
    l = numpy.array([b["block"] for b in blocks])
    for key, color, marker, label in (
        ("difference", "C3", "o", "with context vs query alone + patches"),
        ("context_effect", "0.45", "s", "with context vs query alone, no patch"),
    ):
        mean = numpy.array([b[f"{key}_mean"] for b in blocks])
        se = numpy.array([b[f"{key}_se"] for b in blocks])
        ax.errorbar(l, mean, yerr=se, fmt=marker, color=color, capsize=4, markersize=6, label=label)
    ax.set_yscale("log")
    ax.set_ylim(1e-18, 1e2)
    ax.set_xticks(l)
    ax.set_xlabel("block $l$")
    ax.set_ylabel("norm of the difference of the\nblock's outputs at the query")
    ax.set_title(f"(b) per-block difference, mean ± SE over {cfg['n_tasks']} tasks (float64)")
    ax.legend(loc="center right")
    ax.grid(True, axis="y", alpha=0.25)
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute the deep figure, write deep.json and deep.png into ``out_dir``."""
    return run_experiment(NAME, out_dir, seed, fast, progress, deep_model, compute,
                          deep_config(fast), plot)
