"""The implicit gradient path of one prompt, step by step (Proposition 3.1 of v1).

Feeding the context c_1, ..., c_N to the trained block one token at a time moves its
MLP weight along W_0 = W → W_1 → ... → W_N, with W_i = W + ΔW(c_1..c_i) and

    W_{i+1} = W_i − η_x ∇L_i(W_i),   η_x = 1/‖A(x)‖²,   L_i(W) = trace(G_iᵀ W),
    G_i = W (A_i − A_{i+1}) A(x)ᵀ,                     T_{W_i}(x) = T_W(c_1..c_i, x)

(the paper writes h for η_x and Δ_i for G_i; docs/notation.md).

The figure shows one held-out prompt: (a) the prediction T_{W_i}(x) as tokens are
consumed, against the target; (b) the sizes of the rank-1 increments W_{i+1} − W_i;
(c) the cosine alignment cos_F of successive increments; (d) the relative residual of
the two identities at every step, in float64. W_i for (d) comes from Theorem 2.2 applied
to each prefix prompt on its own (``implicit_update``), and ∇L_i from ``implicit_path``,
so the check compares two independent computations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy

from ..data import least_squares_predict, regression_prompts
from ..dynamics import implicit_path
from ..implicit import implicit_update
from ..model import forward
from ..tolerances import IDENTITY_RTOL, relative_residual
from ..validation import check_bool
from .common import (
    QUIET,
    Progress,
    check_config_record,
    cos_frobenius,
    new_figure,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import paper_model

NAME = "dynamics"
TITLE = "One prompt's implicit gradient path W_0 → W_N (Proposition 3.1)"
LOG_FLOOR = 1e-18  # exact zeros are drawn here on the log axis


@dataclass(frozen=True)
class DynamicsConfig:
    """Our choices for the path figure (not a figure of the paper).

    prompt_index: which prompt of the figure's held-out stream is drawn (0 = the first).
    """

    prompt_index: int = 0

    def __post_init__(self) -> None:
        check_config_record(self, ("prompt_index",))


def dynamics_config(fast: bool = False) -> DynamicsConfig:
    """The settings; the fast variant differs only in the (briefly trained) model."""
    fast = check_bool("fast", fast)
    return DynamicsConfig()


def compute(model, cfg: DynamicsConfig, seed: int, progress: Progress = QUIET) -> dict:
    params, config, setup = model.params, model.config, model.setup
    batch = regression_prompts(cfg.prompt_index + 1, setup.n_context, setup.d, task_rng(seed, NAME))
    part = slice(cfg.prompt_index, cfg.prompt_index + 1)
    context, query = batch.context[part], batch.query[part]  # (1, N, D), (1, D)
    N = context.shape[1]
    path = implicit_path(params, config, context, query)
    eta_x = path.step_size[:, None, None]  # (1, 1, 1) η_x = 1/‖A(x)‖²

    # W_i from Theorem 2.2 on the prefix prompt [c_1..c_i, x], i = 0..N
    progress.update(f"{NAME}: W_i by Theorem 2.2 per prefix")
    W = [path.W0[None, :, :]]
    for i in range(1, N + 1):
        (update,) = implicit_update(params, config, context[:, :i, :], query)
        W.append(path.W0 + update.delta_W)
    increments = [W[i + 1] - W[i] for i in range(N)]  # each (1, M, D)

    step_residual = numpy.array([
        relative_residual(W[i + 1], W[i] - eta_x * path.gradient(i)) for i in range(N)
    ])
    increment_norms = numpy.array([float(numpy.linalg.norm(inc)) for inc in increments])
    cos_successive = numpy.array([
        float(cos_frobenius(increments[i], increments[i + 1])[0]) for i in range(N - 1)
    ])

    # T_{W_i}(x) (query alone, patched) against T_W(c_1..c_i, x) (the prefix prompt)
    progress.update(f"{NAME}: T_W_i(x) against the prefix prompts")
    prediction_patched, prediction_prompt, output_residual = [], [], []
    for i in range(N + 1):
        tokens = numpy.concatenate([context[:, :i, :], query[:, None, :]], axis=1)
        with_prompt, _ = forward(params, config, tokens, last_only=True)  # (1, 1, D)
        patched, _ = forward(params, config, query[:, None, :], patches=path.patch(i))
        output_residual.append(relative_residual(patched[:, -1, :], with_prompt[:, -1, :]))
        prediction_prompt.append(float(with_prompt[0, -1, -1]))
        prediction_patched.append(float(patched[0, -1, -1]))

    rank_one = [bool(numpy.linalg.matrix_rank(W[i] - W[0]) <= 1) for i in range(1, N + 1)]
    headline = {
        "max_step_residual": float(numpy.max(step_residual)),
        "max_output_residual": float(numpy.max(output_residual)),
        "step_size_eta_x": float(path.step_size[0]),  # η_x = 1/‖A(x)‖² (the paper's h)
        "path_rank_one": all(rank_one),
        "prediction_final": prediction_patched[-1],
        "target": float(batch.target[cfg.prompt_index]),
        "least_squares": float(least_squares_predict(batch)[cfg.prompt_index]),
        "mean_cos_successive": float(numpy.mean(cos_successive)),
    }
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": "Proposition 3.1 of v1 (the paper has no figure of one path)",
        "config": asdict(cfg),
        "model": model.describe(),
        "headline": headline,
        "data": {
            "i": numpy.arange(N + 1),
            "prediction_patched": prediction_patched,
            "prediction_prompt": prediction_prompt,
            "increment_norms": increment_norms,
            "cos_successive": cos_successive,
            "step_residual": step_residual,
            "output_residual": output_residual,
            "identity_rtol": IDENTITY_RTOL,
        },
    }


def plot(record: dict, path) -> None:
    fig, axes = new_figure(4, width=4.9, height=3.7, n_rows=2)
    d, head = record["data"], record["headline"]
    i = numpy.asarray(d["i"])
    N = int(i[-1])
    steps = numpy.arange(N)  # step i: W_i -> W_{i+1}

    ax = axes[0]
    ax.plot(i, d["prediction_patched"], "o", color="C0", markersize=3.5,
            label=r"$T_{W_i}(x)$: query alone, patched")
    ax.plot(i, d["prediction_prompt"], "-", color="C1", linewidth=1,
            label=r"$T_W(c_1..c_i, x)$: prefix prompt")
    ax.axhline(head["target"], color="k", linestyle="--", linewidth=1,
               label=r"target $\langle w, x_q\rangle$")
    ax.set_xlabel("tokens consumed $i$")
    ax.set_ylabel("prediction")
    ax.set_title("(a) prediction along the path")
    ax.legend()

    ax = axes[1]
    ax.loglog(steps[1:], numpy.asarray(d["increment_norms"])[1:], ".-", color="C0")
    ax.set_xlabel("step $i$ ($W_i \\to W_{i+1}$)")
    ax.set_ylabel(r"$\|W_{i+1} - W_i\|_F$")
    ax.set_title("(b) size of each rank-1 increment")
    ax.grid(True, which="both", alpha=0.25)

    ax = axes[2]
    ax.plot(steps[:-1], d["cos_successive"], ".-", color="C2")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("step $i$")
    ax.set_ylabel(r"$\cos_F(W_{i+1} - W_i,\; W_{i+2} - W_{i+1})$")
    ax.set_title("(c) alignment of successive increments")

    ax = axes[3]
    step_res = numpy.maximum(numpy.asarray(d["step_residual"]), LOG_FLOOR)
    out_res = numpy.maximum(numpy.asarray(d["output_residual"]), LOG_FLOOR)
    ax.semilogy(steps, step_res, "o", color="C3", markersize=3.5,
                label=r"$W_{i+1}$ vs $W_i - \eta_x \nabla L_i(W_i)$")
    ax.semilogy(i, out_res, "s", color="C4", markersize=3, mfc="none",
                label=r"$T_{W_i}(x)$ vs $T_W(c_1..c_i, x)$")
    ax.axhline(d["identity_rtol"], color="k", linestyle="--", linewidth=1,
               label=f"IDENTITY_RTOL = {d['identity_rtol']:.0e}")
    ax.set_ylim(LOG_FLOOR / 3, 1e-9)
    ax.set_xlabel("step / tokens consumed $i$")
    ax.set_ylabel(f"relative residual (0 drawn at {LOG_FLOOR:.0e})")
    ax.set_title("(d) both identities at every step (float64)")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute the path figure, write dynamics.json and dynamics.png into ``out_dir``."""
    return run_experiment(NAME, out_dir, seed, fast, progress, paper_model, compute,
                          dynamics_config(fast), plot)
