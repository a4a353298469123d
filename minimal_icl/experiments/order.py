"""Order sensitivity: the spread of predictions across orders of the same demonstrations.

Shen, Mishra & Khashabi (2024, ICML, "Position: Do pretrained Transformers learn in-context
by gradient descent?") show the prompt's demonstrations in R = 10 random orders and
measure how much the prediction moves: for predictions p_{r,b} of order r and prompt b,

    spread = (1/B) Σ_b std_r p_{r,b}        (population standard deviation over orders).

They report in-context learning of pretrained LLMs to be several times more
order-sensitive than gradient descent. Here (docs/theory.md §4, §10), on the paper's
regression task (d = 2, N = 50), with the same 10 orders for every learner:

    (a) the trained paper model (one block, no mask, no positions): the query attends to
        an unordered set of tokens, so its prediction is the same for every order
        (spread at rounding level, ~1e-16);
    (b) causal models: one causal block is order-free at the query as well (the query
        sees every token, and in one block the keys and values are the tokens
        themselves); a causal stack of 2 blocks is not (block 2's keys and values come
        from prefixes); the recurrent block (package's own) reads its tokens in order;
    (c) the implicit path W_i = W + ΔW(c_1..c_i) of Proposition 3.1 at every prefix i:
        its prediction T_{W_i}(x) = T_W(c_1..c_i, x) depends on which tokens come first,
        and its endpoint W_N does not;
    (d) full-batch GD on (1/2i) Σ_{j≤i} (θ x_j − y_j)², from θ_0 = 0: a sum over the
        pairs, order-free (rounding level at i = N; for i < N it sees a different set);
    (e) online SGD, one pass, θ ← θ − η (θ x_j − y_j) x_jᵀ (a step on ½ (θ x_j − y_j)²):
        its updates do not commute, so its prediction depends on the order at every i,
        the end included.

Choices (the package's own; Shen et al. study LLMs, not this task): 100 held-out
prompts; the 10 orders are random permutations shared by all prompts; η = 0.1 for online
SGD and for full-batch GD, 50 full-batch steps (tutorial 9's settings). The trained causal
one-block model is the paper's model with the mask switched on: trained on the query's
loss the mask changes nothing (the query row is never masked), so training it would give
the same weights; the record checks that its predictions equal the unmasked ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy

from ..data import regression_prompts
from ..dynamics import implicit_path
from ..model import forward, predict
from ..validation import (
    check_bool,
    check_float_array,
    check_non_negative_int,
    check_step_size,
)
from .common import (
    QUIET,
    Progress,
    _real_array,
    check_config_record,
    new_figure,
    run_experiment,
    save_figure,
    task_rng,
)
from .models import causal_stack_model, paper_model, rnn_model

NAME = "order"
TITLE = "Order sensitivity: the spread of predictions across 10 orders of the same demonstrations"
LOG_FLOOR = 1e-18  # exact zeros are drawn here on the log axis


@dataclass(frozen=True)
class OrderConfig:
    """Our choices for the order figure (Shen, Mishra & Khashabi's protocol, our task).

    n_tasks:     held-out prompts; the spread is averaged over them.
    n_orders:    random orders of each prompt's demonstrations (Shen et al.: 10).
    sgd_lr:      η of online SGD, one pass over the demonstrations.
    gd_lr:       η of full-batch GD.
    gd_steps:    full-batch GD steps.
    """

    n_tasks: int = 100
    n_orders: int = 10
    sgd_lr: float = 0.1
    gd_lr: float = 0.1
    gd_steps: int = 50

    def __post_init__(self) -> None:
        check_config_record(self)


def order_config(fast: bool = False) -> OrderConfig:
    """The settings; the fast variant uses 20 prompts (and briefly trained models)."""
    fast = check_bool("fast", fast)
    return OrderConfig(n_tasks=20) if fast else OrderConfig()


def spread_across_orders(predictions) -> numpy.ndarray:
    """Shen et al.'s measure: (1/B) Σ_b std_r p[r, b, ...], the population standard
    deviation over the orders r averaged over the prompts b.

    predictions (R, B) or (R, B, N+1), R, B ≥ 1. Returns a float, or (N+1,).
    """
    predictions = _real_array("spread_across_orders", "predictions", predictions)
    if predictions.ndim not in (2, 3) or min(predictions.shape) < 1:
        raise ValueError(
            "spread_across_orders: predictions must have shape (R, B) or (R, B, N+1) with"
            f" R, B ≥ 1 (orders, prompts), got {predictions.shape}"
        )
    return numpy.mean(numpy.std(predictions, axis=0), axis=0)


def _check_pairs(function: str, x, y, x_q) -> None:
    """x (B, N, d), y (B, N), x_q (B, d) of real floating point, B, N, d ≥ 1: the context
    pairs and the query of the explicit learners (a ValueError or TypeError naming the
    argument; x_q of another width would broadcast silently)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{function}: x must have shape (B, N, d) with B, N, d ≥ 1, got"
                         f" {type(x).__name__ if shape is None else tuple(shape)}")
    B, N, d = shape
    for name, a, want in (("y", y, (B, N)), ("x_q", x_q, (B, d))):
        if getattr(a, "shape", None) != want:
            raise ValueError(f"{function}: x {tuple(shape)} needs {name} of shape {want}, got"
                             f" {getattr(a, 'shape', type(a).__name__)}")
    for name, a in (("x", x), ("y", y), ("x_q", x_q)):
        check_float_array(name, a)


def path_predictions(params, config, context, query) -> numpy.ndarray:
    """T_{W_i}(x) = T_W(c_1..c_i, x) along the implicit path, i = 0..N: the query alone
    through the block patched with ΔW(c_1..c_i) (Proposition 3.1). Returns (B, N+1)."""
    path = implicit_path(params, config, context, query)
    alone = query[:, None, :]
    return numpy.stack([predict(params, config, alone, patches=path.patch(i))
                        for i in range(context.shape[1] + 1)], axis=1)


def online_sgd_predictions(x, y, x_q, lr: float) -> numpy.ndarray:
    """⟨θ_i, x_q⟩ after i online SGD steps θ ← θ − η (⟨θ, x_j⟩ − y_j) x_j from θ_0 = 0,
    one pair at a time in the given order, i = 0..N. x (B, N, d), y (B, N), x_q (B, d);
    returns (B, N+1). The step η = ``lr`` is finite and ≥ 0."""
    _check_pairs("online_sgd_predictions", x, y, x_q)
    lr = check_step_size(lr, "lr")
    theta = numpy.zeros((x.shape[0], x.shape[2]))
    out = [numpy.sum(theta * x_q, axis=1)]
    for j in range(x.shape[1]):
        residual = numpy.sum(theta * x[:, j], axis=1) - y[:, j]  # (B,)
        theta = theta - lr * residual[:, None] * x[:, j]
        out.append(numpy.sum(theta * x_q, axis=1))
    return numpy.stack(out, axis=1)


def full_batch_gd_predictions(x, y, x_q, lr: float, steps: int) -> numpy.ndarray:
    """⟨θ, x_q⟩ after ``steps`` full-batch GD steps θ ← θ − η ∇L(θ) on the first i pairs,
    L(θ) = (1/2i) Σ_{j≤i} (⟨θ, x_j⟩ − y_j)², from θ_0 = 0, for every prefix i = 0..N at
    once (i = 0: no data, θ stays 0).
    x (B, N, d), y (B, N), x_q (B, d); returns (B, N+1). The step η = ``lr`` is finite
    and ≥ 0; ``steps`` an int ≥ 0."""
    _check_pairs("full_batch_gd_predictions", x, y, x_q)
    lr = check_step_size(lr, "lr")
    steps = check_non_negative_int("steps", steps)
    B, N, d = x.shape
    i = numpy.arange(N + 1)
    mask = (numpy.arange(N)[None, :] < i[:, None]) / numpy.maximum(i, 1)[:, None]  # (N+1, N)
    theta = numpy.zeros((B, N + 1, d))  # one θ per prefix
    for _ in range(steps):
        residual = theta @ x.transpose(0, 2, 1) - y[:, None, :]  # (B, N+1, N)
        theta = theta - lr * (residual * mask) @ x  # (1/i) Σ_{j≤i} residual_j x_j per prefix
    return numpy.sum(theta * x_q[:, None, :], axis=-1)


def compute(models, cfg: OrderConfig, seed: int, progress: Progress = QUIET) -> dict:
    """Every learner on the same prompts in the same orders; the spreads as a record.

    ``models`` = (paper model, causal 2-block stack, recurrent block), TrainedModels.
    """
    paper, stack, rnn = models
    setup = paper.setup
    N, d = setup.n_context, setup.d
    batch = regression_prompts(cfg.n_tasks, N, d, task_rng(seed, NAME))
    context, query = numpy.asarray(batch.context), numpy.asarray(batch.query)
    rng = task_rng(seed, NAME + "/orders")
    orders = [rng.permutation(N) for _ in range(cfg.n_orders)]
    causal_one = replace(paper.config, causal=True)
    learners = {  # key: (label, params, config)
        "noncausal_block": ("one block, no mask (paper model)", paper.params, paper.config),
        "causal_block": ("one causal block", paper.params, causal_one),
        "causal_stack": ("causal 2-block stack", stack.params, stack.config),
        "rnn_block": ("recurrent block (package's own)", rnn.params, rnn.config),
    }
    endpoint = {key: [] for key in learners}
    path, sgd, gd = [], [], []
    for r, order in enumerate(orders):
        progress.update(f"{NAME}: order", r, len(orders))
        shuffled = context[:, order]  # (B, N, D) the same demonstrations, order r
        tokens = numpy.concatenate([shuffled, query[:, None, :]], axis=1)
        for key, (_, params, config) in learners.items():
            endpoint[key].append(numpy.asarray(forward(params, config, tokens)[0][:, -1, -1]))
        path.append(path_predictions(paper.params, paper.config, shuffled, query))
        x, y, x_q = shuffled[..., :-1], shuffled[..., -1], query[:, :-1]
        sgd.append(online_sgd_predictions(x, y, x_q, cfg.sgd_lr))
        gd.append(full_batch_gd_predictions(x, y, x_q, cfg.gd_lr, cfg.gd_steps))

    spread_path = spread_across_orders(path)  # (N+1,)
    spread_sgd = spread_across_orders(sgd)
    spread_gd = spread_across_orders(gd)
    spreads = {key: float(spread_across_orders(values)) for key, values in endpoint.items()}
    spreads.update({"implicit_path": float(spread_path[N]), "full_batch_gd": float(spread_gd[N]),
                    "online_sgd": float(spread_sgd[N])})
    causal_gap = float(numpy.max(numpy.abs(numpy.asarray(endpoint["causal_block"])
                                           - numpy.asarray(endpoint["noncausal_block"]))))
    target_rms = float(numpy.sqrt(numpy.mean(numpy.asarray(batch.target) ** 2)))
    headline = {f"spread_{key}": value for key, value in spreads.items()}
    headline.update({
        "spread_implicit_path_mean_over_prefixes": float(numpy.mean(spread_path[1:N])),
        "spread_implicit_path_at_half": float(spread_path[N // 2]),
        "spread_online_sgd_at_half": float(spread_sgd[N // 2]),
        "spread_full_batch_gd_at_half": float(spread_gd[N // 2]),
        "causal_block_max_difference_from_noncausal": causal_gap,
        "target_rms": target_rms,
    })
    return {
        "figure": NAME,
        "title": TITLE,
        "paper": ("not in Dherin et al.; protocol of Shen, Mishra & Khashabi (2024): 10 random"
                  " orders, the standard deviation of the prediction across them"),
        "config": asdict(cfg),
        "model": paper.describe(),
        "causal_stack_model": stack.describe(),
        "rnn_model": rnn.describe(),
        "headline": headline,
        "data": {
            "labels": {key: label for key, (label, _, _) in learners.items()},
            "i": numpy.arange(N + 1),
            "spread_implicit_path": spread_path,
            "spread_online_sgd": spread_sgd,
            "spread_full_batch_gd": spread_gd,
            "orders": numpy.stack(orders),
        },
    }


def plot(record: dict, path) -> None:
    fig, (ax_end, ax_path) = new_figure(2, width=5.6, height=4.2)
    h, data = record["headline"], record["data"]
    bars = [("one block,\nno mask", "spread_noncausal_block"),
            ("one causal\nblock", "spread_causal_block"),
            ("causal\n2-block stack", "spread_causal_stack"),
            ("recurrent\nblock", "spread_rnn_block"),
            ("implicit\npath W_N", "spread_implicit_path"),
            ("full-batch\nGD", "spread_full_batch_gd"),
            ("online\nSGD", "spread_online_sgd")]
    values = [max(h[key], LOG_FLOOR) for _, key in bars]
    colors = ["C0", "C0", "C3", "C3", "C1", "C2", "C4"]
    ax_end.bar(range(len(bars)), values, color=colors)
    for k, value in enumerate(values):
        ax_end.text(k, value * 1.6, f"{h[bars[k][1]]:.0e}", ha="center", fontsize=7)
    ax_end.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=7)
    ax_end.set_yscale("log")
    ax_end.set_ylim(LOG_FLOOR / 3, 30)
    ax_end.set_ylabel("spread across orders of the prediction")
    ax_end.set_title("after all N demonstrations")
    ax_end.grid(True, axis="y", alpha=0.25)

    i = numpy.asarray(data["i"])
    curves = (("spread_implicit_path", "implicit path $T_{W_i}(x)$, paper model", "C1"),
              ("spread_full_batch_gd", "full-batch GD on the first i pairs", "C2"),
              ("spread_online_sgd", "online SGD after i pairs", "C4"))
    for key, label, color in curves:
        values = numpy.maximum(numpy.asarray(data[key]), LOG_FLOOR)
        ax_path.plot(i[1:], values[1:], color=color, label=label)
    ax_path.set_yscale("log")
    ax_path.set_xlabel("demonstrations consumed i")
    ax_path.set_ylabel("spread across orders")
    n, R = record["config"]["n_tasks"], record["config"]["n_orders"]
    ax_path.set_title(f"along the way ({R} orders, {n} prompts)")
    ax_path.legend(fontsize=8, loc="center left")
    ax_path.grid(True, which="both", alpha=0.25)
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute the order figure, write order.json and order.png into ``out_dir``."""

    def load(out, seed, fast, progress):
        return (paper_model(out, seed, fast, progress),
                causal_stack_model(out, seed, fast, progress),
                rnn_model(out, seed, fast, progress))

    return run_experiment(NAME, out_dir, seed, fast, progress, load, compute, order_config(fast),
                          plot)
