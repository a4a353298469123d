"""Every position as a query: how the per-position patches align, on the trained models.

Any position t of a prompt can play the query (Innocenti & Achour 2025,
arXiv:2512.11255; docs/theory.md §3): with u_t, h_t block l's MLP input and residual at
t in the run of the whole prompt and u_∅,t, h_∅,t the same for position t's input to
block l run alone,

    ΔW_l,t = W_l (u_t − u_∅,t) u_∅,tᵀ / ‖u_∅,t‖²,   Δb′_l,t = h_t − h_∅,t (MLP skip),

and position t's token alone through the patched blocks gives position t's output.
Innocenti & Achour's variant reproduces every position from the LAST token x alone:
in the first block u_∅,t, h_∅,t are replaced by u_x, h_x (from the second block on the
patches are the per-position ones, so that the chained ``forward`` reproduces position
t; their code instead patches every block from the last position's own input,
``implicit_update_from_last_token(..., per_block=True)``, not used here).

The figure is not in Dherin et al.; Innocenti & Achour study the same question (how the
updates of different tokens relate, within and across blocks) on their own models. This
measurement, on the package's trained paper model (one block) and the trained 4-block
pre-LN model of Figure 5, is the package's own:

* within a block: cos_F(ΔW_l,t, ΔW_l,t′) between every pair of positions, which for
  rank-1 patches (W δu_t) a_tᵀ/‖a_t‖² is cos(W δu_t, W δu_t′) · cos(a_t, a_t′)
  (``position_alignment``), for
  the own-token patches and for the last-token variant;
* across blocks: cos_F(ΔW_l,t, ΔW_l′,t) at the same position (the blocks' W_l have the
  same shape; their coordinates are not shared, so the number is read against the
  cos_F of random rank-1 matrices of that shape);
* the identity behind both: the relative residual of
  ``forward(tokens[:, t:t+1], patches=at_position(updates, t))`` (the last-token
  variant: ``tokens[:, -1:]``) against ``forward(tokens)[:, t]``, at every position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy

from ..data import regression_prompts
from ..model import forward
from ..positions import (
    at_position,
    implicit_update_every_position,
    implicit_update_from_last_token,
    position_alignment,
)
from ..tolerances import IDENTITY_RTOL, relative_residual
from ..validation import check_bool
from .common import (
    QUIET,
    Progress,
    check_config_record,
    new_figure,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import deep_model, paper_model

NAME = "positions"
TITLE = "Every position as a query: alignment of the per-position patches"
VARIANTS = {"own": "own token alone", "last_token": "last token alone (Innocenti & Achour)"}


@dataclass(frozen=True)
class PositionsConfig:
    """Our choices for the positions figure (not a figure of the paper).

    n_tasks:        held-out prompts (regression tasks, N = 50 context pairs) per model;
                    every one of their T = 51 positions plays the query.
    n_random_pairs: pairs of random rank-1 matrices (Gaussian column and row) for the
                    reference level of |cos_F| across blocks.
    """

    n_tasks: int = 100
    n_random_pairs: int = 20_000

    def __post_init__(self) -> None:
        check_config_record(self)


def positions_config(fast: bool = False) -> PositionsConfig:
    """The settings; the fast variant uses 10 prompts and 2,000 random pairs."""
    fast = check_bool("fast", fast)
    if fast:
        return PositionsConfig(n_tasks=10, n_random_pairs=2_000)
    return PositionsConfig()


def identity_residuals(params, config, tokens, updates, from_last: bool) -> numpy.ndarray:
    """Per position t, relative_residual of the patched lone token against forward(tokens)[:, t].

    The lone token is tokens[:, t:t+1] (own-token patches) or tokens[:, -1:] (the
    last-token variant, ``from_last``). Returns (T,).
    """
    full, _ = forward(params, config, tokens)
    residuals = []
    for t in range(tokens.shape[1]):
        alone = tokens[:, -1:] if from_last else tokens[:, t:t + 1]
        patched, _ = forward(params, config, alone, patches=at_position(updates, t))
        residuals.append(relative_residual(patched[:, 0], full[:, t]))
    return numpy.array(residuals)


def across_blocks(updates) -> numpy.ndarray:
    """cos_F(ΔW_l,t, ΔW_l′,t) between blocks at the same position: (L, L, B, T)."""
    W = numpy.stack([numpy.asarray(u.delta_W) for u in updates])  # (L, B, T, M, D)
    norm = numpy.linalg.norm(W, axis=(-2, -1))  # (L, B, T)
    inner = numpy.einsum("lbtmd,kbtmd->lkbt", W, W)
    return inner / (norm[:, None] * norm[None, :])


def random_rank_one_cos(M: int, D: int, n: int, rng) -> float:
    """Mean |cos_F| of two independent random rank-1 (M, D) matrices c rᵀ, Gaussian c, r:
    E|cos(c, c′)| · E|cos(r, r′)|, estimated from n pairs."""
    c = rng.standard_normal((2, n, M))
    r = rng.standard_normal((2, n, D))

    def cos(a):
        return numpy.sum(a[0] * a[1], -1) / numpy.linalg.norm(a[0], axis=-1) / numpy.linalg.norm(a[1], axis=-1)

    return float(numpy.mean(numpy.abs(cos(c) * cos(r))))


def alignment_summary(cos: numpy.ndarray) -> dict:
    """Mean cos_F and mean |cos_F| over pairs t ≠ t′ of one block's (B, T, T) alignment:
    between two context positions, and between the query (last position) and the context."""
    T = cos.shape[-1]
    off = ~numpy.eye(T - 1, dtype=bool)
    context = cos[:, :-1, :-1][:, off]  # (B, (T−1)(T−2))
    query = cos[:, -1, :-1]  # (B, T−1)
    return {
        "context_mean": float(numpy.nanmean(context)),
        "context_abs_mean": float(numpy.nanmean(numpy.abs(context))),
        "query_context_mean": float(numpy.nanmean(query)),
        "query_context_abs_mean": float(numpy.nanmean(numpy.abs(query))),
    }


def measure_model(model, cfg: PositionsConfig, seed: int, label: str,
                  progress: Progress = QUIET, heatmap: bool = True) -> dict:
    """Alignment within and across blocks and the identity residuals of one trained model.

    ``heatmap``: also record the first block's (T, T) mean alignment (4 decimals), the
    panels (a) and (b) of the figure.
    """
    params, config, setup = model.params, model.config, model.setup
    batch = regression_prompts(cfg.n_tasks, setup.n_context, setup.d, task_rng(seed, f"{NAME}/{label}"))
    tokens = batch.tokens  # (B, T, D)
    out = {"label": label, "n_blocks": config.n_blocks, "variants": {}}
    for key, from_last in (("own", False), ("last_token", True)):
        progress.update(f"{NAME}: {label}, {VARIANTS[key]}")
        if from_last:
            updates = implicit_update_from_last_token(params, config, tokens)
        else:
            updates = implicit_update_every_position(params, config, tokens)
        alignment = position_alignment(updates)  # L × (B, T, T)
        residuals = identity_residuals(params, config, tokens, updates, from_last)
        norms = numpy.linalg.norm(numpy.asarray(updates[0].delta_W), axis=(-2, -1))  # (B, T)
        out["variants"][key] = {
            "blocks": [alignment_summary(numpy.asarray(a)) for a in alignment],
            "residual_per_position": residuals,
            "max_residual": float(residuals.max()),
            "norm_block1_mean": numpy.mean(norms, axis=0),  # (T,)
        }
        if heatmap:
            mean = numpy.nanmean(numpy.asarray(alignment[0]), axis=0)  # (T, T)
            out["variants"][key]["heatmap_block1"] = numpy.round(mean, 4)
        if key == "own" and config.n_blocks > 1:
            cross = across_blocks(updates)  # (L, L, B, T)
            out["across_blocks_abs_mean"] = numpy.mean(numpy.abs(cross), axis=(2, 3))
            out["across_blocks_mean"] = numpy.mean(cross, axis=(2, 3))
            M, D = config.d_mlp, config.d_token
            out["random_rank_one_abs_cos"] = random_rank_one_cos(
                M, D, cfg.n_random_pairs, task_rng(seed, f"{NAME}/random"))
    return out


def compute(models, cfg: PositionsConfig, seed: int, progress: Progress = QUIET) -> dict:
    paper, deep = models
    measured = {
        "paper": measure_model(paper, cfg, seed, "paper model (1 block)", progress),
        "deep": measure_model(deep, cfg, seed, "deep model (4 pre-LN blocks)", progress,
                              heatmap=False),
    }
    p_own, p_last = (measured["paper"]["variants"][k]["blocks"][0] for k in ("own", "last_token"))
    d = measured["deep"]
    L = d["n_blocks"]
    across = numpy.asarray(d["across_blocks_abs_mean"])
    headline = {
        "paper_cos_F_context_own": p_own["context_mean"],
        "paper_cos_F_query_context_own": p_own["query_context_mean"],
        "paper_cos_F_context_last_token": p_last["context_mean"],
        "deep_cos_F_context_own_per_block": [b["context_mean"] for b in d["variants"]["own"]["blocks"]],
        "deep_abs_cos_F_context_own_per_block": [b["context_abs_mean"]
                                                  for b in d["variants"]["own"]["blocks"]],
        "deep_cos_F_context_last_token_per_block": [
            b["context_mean"] for b in d["variants"]["last_token"]["blocks"]],
        "deep_abs_cos_F_across_blocks_mean": float(across[~numpy.eye(L, dtype=bool)].mean()),
        "random_rank_one_abs_cos_F": d["random_rank_one_abs_cos"],
        "max_residual_own": max(m["variants"]["own"]["max_residual"] for m in measured.values()),
        "max_residual_last_token": max(m["variants"]["last_token"]["max_residual"]
                                       for m in measured.values()),
    }
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": "not in v1; the statement is Innocenti & Achour (2025), the figure the package's own",
        "config": asdict(cfg),
        "model": paper.describe(),
        "deep_model": deep.describe(),
        "headline": headline,
        "tolerances": {"IDENTITY_RTOL": IDENTITY_RTOL},
        "data": measured,
    }


def plot(record: dict, path) -> None:
    fig, axes = new_figure(6, width=4.8, height=4.2, n_rows=2)
    paper, deep = record["data"]["paper"], record["data"]["deep"]

    for ax, key, letter in ((axes[0], "own", "a"), (axes[1], "last_token", "b")):
        heat = numpy.asarray(paper["variants"][key]["heatmap_block1"], dtype=float)
        image = ax.imshow(heat, vmin=-1, vmax=1, cmap="RdBu_r", origin="lower")
        ax.set_xlabel("position s (50 = the query)")
        ax.set_ylabel("position t")
        ax.set_title(f"({letter}) paper model, {VARIANTS[key]}:\n"
                     r"mean $\cos_F(\Delta W_s, \Delta W_t)$ over prompts")
        fig.colorbar(image, ax=ax, shrink=0.85)

    ax = axes[2]
    L = deep["n_blocks"]
    blocks = numpy.arange(1, L + 1)
    for key, color in (("own", "C0"), ("last_token", "C1")):
        stats = deep["variants"][key]["blocks"]
        short = VARIANTS[key].split(" (")[0]
        ax.plot(blocks, [s["context_mean"] for s in stats], "o-", color=color,
                label=f"{short}: mean")
        ax.plot(blocks, [s["context_abs_mean"] for s in stats], "s--", color=color,
                label=f"{short}: mean |·|", markerfacecolor="none")
    for key, marker in (("own", "*"), ("last_token", "x")):
        value = paper["variants"][key]["blocks"][0]["context_mean"]
        ax.plot([0], [value], marker, color="C0" if key == "own" else "C1", markersize=10)
    ax.set_xticks([0, *blocks], ["paper", *[str(b) for b in blocks]])
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("block l (0: the paper model's one block)")
    ax.set_ylabel(r"$\cos_F$ between context positions")
    ax.set_ylim(-0.05, 1.6)
    ax.set_title("(c) within a block, deep model (and paper)")
    ax.legend(fontsize=7.5, loc="upper center", ncol=2)

    ax = axes[3]
    across = numpy.asarray(deep["across_blocks_abs_mean"], dtype=float)
    image = ax.imshow(across, vmin=0, vmax=1, cmap="viridis", origin="lower")
    for i in range(L):
        for j in range(L):
            ax.text(j, i, f"{across[i, j]:.2f}", ha="center", va="center",
                    color="white" if across[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(L), [str(b) for b in blocks])
    ax.set_yticks(range(L), [str(b) for b in blocks])
    ax.set_xlabel("block l′")
    ax.set_ylabel("block l")
    ax.set_title("(d) across blocks, same position, own patches:\n"
                 rf"mean $|\cos_F(\Delta W_{{l,t}}, \Delta W_{{l',t}})|$"
                 f" (random rank 1: {deep['random_rank_one_abs_cos']:.2f})")
    fig.colorbar(image, ax=ax, shrink=0.85)

    ax = axes[4]
    floor = 1e-18
    for model, style in ((paper, "-"), (deep, "--")):
        for key, color in (("own", "C0"), ("last_token", "C1")):
            r = numpy.maximum(numpy.asarray(model["variants"][key]["residual_per_position"]), floor)
            ax.semilogy(numpy.arange(r.shape[0]), r, style, color=color,
                        label=f"{model['label'].split(' (')[0]}, {VARIANTS[key].split(' (')[0]}")
    ax.axhline(record["tolerances"]["IDENTITY_RTOL"], color="C3", linestyle=":",
               label="IDENTITY_RTOL")
    ax.set_xlabel("position t")
    ax.set_ylabel("relative residual (max over prompts)")
    ax.set_title("(e) the lone token, patched, vs position t's output")
    ax.legend(fontsize=7.5)

    ax = axes[5]
    for model, style in ((paper, "-"), (deep, "--")):
        for key, color in (("own", "C0"), ("last_token", "C1")):
            n = numpy.asarray(model["variants"][key]["norm_block1_mean"])
            ax.semilogy(numpy.arange(n.shape[0]), n, style, color=color,
                        label=f"{model['label'].split(' (')[0]}, {VARIANTS[key].split(' (')[0]}")
    ax.set_xlabel("position t")
    ax.set_ylabel(r"mean $\|\Delta W_{1,t}\|_F$ (first block)")
    ax.set_title("(f) size of the first block's patch")
    ax.legend(fontsize=7.5)
    save_figure(fig, path, dpi=90)


def load_models(out_dir, seed: int, fast: bool, progress: Progress = QUIET) -> tuple:
    """(paper model, deep model): both shared models, loaded from ``out_dir`` or trained."""
    return (paper_model(out_dir, seed, fast, progress), deep_model(out_dir, seed, fast, progress))


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute the positions figure, write positions.json and positions.png into ``out_dir``."""
    return run_experiment(NAME, out_dir, seed, fast, progress, load_models, compute,
                          positions_config(fast), plot)
