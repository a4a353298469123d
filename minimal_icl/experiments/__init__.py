"""The paper's experiments (Dherin et al. 2025, arXiv:2507.16003, section 4), one per figure.

    python -m minimal_icl figure NAME --out DIR [--seed N] [--fast/--no-fast]
    python -m minimal_icl reproduce --out DIR [--seed N] [--fast/--no-fast]

Figures (each writes DIR/NAME.png and DIR/NAME.json: the numbers plotted, the headline
numbers and the settings used):

    identity     Figure 2: prompt and patched query agree, during training and on a grid
    convergence  Figure 3: the increments ‖W_{i+1} − W_i‖ shrink like 1/i, with untrained controls
    finetune     Figure 4: finetuning W on i examples against the implicit patch ΔW_i
    deep         Figure 5 (later versions): per-block patches of a 4-block pre-LN stack
    dynamics     Proposition 3.1 on one prompt: the path W_0 → W_N, step by step
    positions    every position as a query: alignment of the per-position patches
    thought      one patch for all queries: held-out error against K calibration queries
    order        order sensitivity (Shen et al. 2024): spread of predictions over 10 orders
    linear-dynamics  how linear attention learns in context (Zhang, Singh, Latham & Saxe
                 2025): one drop (merged KQ), one drop per eigenvalue (separate K, Q)

``reproduce`` runs them all and writes DIR/summary.md. The trained models are shared:
DIR/paper_model.npz (Figures 2–4, dynamics, positions, thought, order), DIR/deep_model.npz
(deep, positions), DIR/rnn_model.npz (convergence, order) and
DIR/causal_stack_model.npz (order), trained once and
reused while they match the settings. Each figure's choices live in one config record
in its module (``IdentityConfig``, ...), with a fast variant for smoke tests.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..validation import check_bool
from . import convergence, deep, dynamics, finetune, identity
from . import linattn_dynamics, order, positions, thought
from .common import (
    QUIET,
    ExperimentError,
    Progress,
    check_progress,
    check_seed,
    prepare_out_dir,
)
from .summary import write_summary

FIGURES = {
    "identity": identity.run,
    "convergence": convergence.run,
    "finetune": finetune.run,
    "deep": deep.run,
    "dynamics": dynamics.run,
    "positions": positions.run,
    "thought": thought.run,
    "order": order.run,
    "linear-dynamics": linattn_dynamics.run,
}


def _check_run(seed, fast, progress) -> tuple[int, bool]:
    """The arguments every run shares, checked before the output folder is made: seed an
    int ≥ 0 (ExperimentError), fast True or False, progress a Progress (TypeError)."""
    seed = check_seed(seed)
    fast = check_bool("fast", fast)
    check_progress(progress)
    return seed, fast


def run_figure(name: str, out, seed: int = 0, fast: bool = False,
               progress: Progress = QUIET) -> dict:
    """Run one figure into the folder ``out``; returns its JSON record."""
    if not isinstance(name, str) or name not in FIGURES:
        raise ExperimentError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")
    seed, fast = _check_run(seed, fast, progress)
    out = prepare_out_dir(out)
    return FIGURES[name](out, seed=seed, fast=fast, progress=progress)


def reproduce(out, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Run every figure into ``out`` and write summary.md; returns {name: record}."""
    seed, fast = _check_run(seed, fast, progress)
    out = prepare_out_dir(out)
    start = time.perf_counter()
    records = {}
    for name, run in FIGURES.items():
        records[name] = run(out, seed=seed, fast=fast, progress=progress)
        progress.message(f"{name}: {records[name]['seconds']:.1f} s -> {Path(out) / name}.png")
    write_summary(out, records, seed, fast, time.perf_counter() - start)
    return records


__all__ = ["FIGURES", "ExperimentError", "Progress", "reproduce", "run_figure"]
