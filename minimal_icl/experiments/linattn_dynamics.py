"""Linear attention acquiring in-context learning (Zhang, Singh, Latham & Saxe 2025).

``run(out_dir, seed, fast)`` trains ATTN_M (H = 8) and rank-1 ATTN_S (H = 5) by full-batch
gradient descent on a fixed training set, and writes ``linear-dynamics.png`` and
``linear-dynamics.json``:

* loss against epochs on held-out sequences for ATTN_M, ATTN_M with its zero blocks held
  at zero, the cubic-feature network (training loss, on top of the latter) and ATTN_S, with
  the plateau levels L(M_m) as horizontal lines;
* the learned effective matrix's projections on the eigenvectors of Λ over time,
  p_d′(t) = e_d′ᵀ A(t) e_d′ / c_d′, c_d′ = λ_d′⁻¹ (1 + (1 + tr Λ/λ_d′)/N)⁻¹ (1 once
  learned; d′ indexes the eigenvectors, as in docs/notation.md);
* the time of the first drop against the initialisation scale, for each parametrization;
* (full run) rank-2 ATTN_S.

Settings (those of docs/theory.md §9, in the package's 1/N convention): d = 4, N = 31,
λ ∝ (4, 3, 2, 1)/10 with a random rotation, P = 20,000 training sequences (fast: 5,000),
100,000 held-out sequences (fast: 20,000); ATTN_S lr 0.395, init 0.0628, 50,000 epochs
(fast: init 0.126, 12,000 epochs); ATTN_M lr 0.124, init 5.6e-6, 3,000 epochs. An epoch
is one full-batch GD step; a run of E epochs holds epochs 0..E (the 50,001, 12,001 and
3,001 of docs/theory.md §9), of which every ``stride`` = 10th and the last are recorded.

The package's rules (not the paper's):

* plateau: a maximal run of recorded epochs, at least ``window`` epochs long (0.1 % of
  the run, at least 2 · stride epochs), over which the held-out loss changes by less
  than 0.5 % of tr Λ per ``window``; its level is the median loss over the run (extended
  by one window, the end of training at most); consecutive plateaus
  whose levels differ by less than 2 % of tr Λ are merged (the closest predicted levels,
  L(M_{d−1}) and L(M_d), differ by 7 % of tr Λ). A drop is the passage between
  consecutive plateaus: drops = plateaus − 1;
* a plateau is assigned to m = the number of eigen-directions learned at its middle
  (p_d > 1/2); a plateau m that no run reaches is reported as absent (null), not forced;
* the time of a drop is the first epoch whose held-out loss is below the midpoint of the
  levels before and after it (ATTN_S: L(M_0), L(M_1); ATTN_M: L(M_0), L(M_d));
* eigenvector_order: the 1-based eigenvalue ranks of the directions in the order in
  which their p_d first exceeds 1/2.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy

from .. import linattn as la
from ..validation import check_bool, check_non_negative, check_positive_int, host_real_array
from .common import (QUIET, Progress, check_config_record, check_seed, new_figure,
                     prepare_out_dir, save_figure, write_json)

NAME = "linear-dynamics"


@dataclass(frozen=True)
class LinearDynamicsConfig:
    """The settings of the figure (those of docs/theory.md §9; ours where noted)."""

    d: int = 4
    n_context: int = 31
    n_train: int = 20_000
    n_heldout: int = 100_000
    s_heads: int = 5
    s_lr: float = 0.395
    s_init: float = 0.0628
    s_epochs: int = 50_000
    m_heads: int = 8
    m_lr: float = 0.124
    m_init: float = 5.6e-6
    m_epochs: int = 3_000
    stride: int = 10
    s_scales: tuple = (0.0157, 0.0314, 0.0628, 0.126)
    m_scales: tuple = (5.6e-10, 5.6e-8, 5.6e-6, 5.6e-4)
    scale_epochs: int = 50_000
    rank2: bool = True
    flat_fraction: float = 0.001  # ours: the plateau window, a fraction of the run
    flat_tol: float = 0.005  # ours: loss change per window on a plateau, × tr Λ
    merge_tol: float = 0.02  # ours: plateaus closer than this (× tr Λ) are one plateau

    def __post_init__(self) -> None:
        check_config_record(self, ("flat_tol", "merge_tol"))


def linear_dynamics_config(fast: bool = False) -> LinearDynamicsConfig:
    """The settings; the fast variant: 5,000 training and 20,000 held-out sequences,
    12,000 epochs for ATTN_S and for the sweeps over three initial scales per
    parametrization, no rank-2 ATTN_S run."""
    fast = check_bool("fast", fast)
    if not fast:
        return LinearDynamicsConfig()
    return LinearDynamicsConfig(n_train=5_000, n_heldout=20_000, s_init=0.126, s_epochs=12_000,
                                s_scales=(0.063, 0.126, 0.252), m_scales=(5.6e-8, 5.6e-6, 5.6e-4),
                                scale_epochs=12_000, rank2=False)


def projections(effective: numpy.ndarray, cov: la.Covariance, n_context: int) -> numpy.ndarray:
    """p_d′(t) = e_d′ᵀ A(t) e_d′ / c_d′ for each recorded A(t), with
    c_d′ = λ_d′⁻¹ (1 + (1 + tr Λ/λ_d′)/N)⁻¹ the eigenvalue of Γ⁻¹ on e_d′: 1 once learned.
    effective (n_recorded, d, d); returns (n_recorded, d), one column per eigenvector."""
    la._check_record("cov", cov, (la.Covariance,), "covariance")
    n_context = check_positive_int("n_context", n_context)
    d = cov.eigenvalues.shape[0]
    shape = getattr(effective, "shape", None)
    if shape is None or len(shape) != 3 or tuple(shape[1:]) != (d, d):
        raise ValueError(f"projections: effective must have shape (n_recorded, {d}, {d}) for"
                         f" the covariance's d = {d}, got"
                         f" {type(effective).__name__ if shape is None else tuple(shape)}")
    lam, E = cov.eigenvalues, cov.eigenvectors
    c = 1.0 / (lam * (1.0 + (1.0 + lam.sum() / lam) / n_context))
    return numpy.einsum("di,edk,ki->ei", E, effective, E) / c


def _curve(function: str, epochs, loss=None):
    """epochs (and loss) as 1-d real host arrays of one length ≥ 1, epochs increasing: a
    ValueError or TypeError naming them."""
    arrays = []
    for name, values in (("epochs", epochs), ("loss", loss)):
        if name == "loss" and values is None:
            continue
        values = host_real_array(f"{function}: {name}", values)
        if values.ndim != 1 or values.shape[0] < 1:
            raise ValueError(f"{function}: {name} must be a non-empty 1-d array, got shape"
                             f" {values.shape}")
        arrays.append(values)
    if len(arrays) == 2 and arrays[0].shape != arrays[1].shape:
        raise ValueError(f"{function}: epochs and loss must have one length, got"
                         f" {arrays[0].shape[0]} and {arrays[1].shape[0]}")
    if numpy.any(numpy.diff(arrays[0]) <= 0):
        raise ValueError(f"{function}: epochs must be increasing")
    return arrays if len(arrays) == 2 else arrays[0]


def find_plateaus(epochs, loss, window: int, tol: float,
                  merge_tol: float = 0.0) -> list[tuple[int, int, float]]:
    """The plateaus of a loss curve (the package's rule, module docstring): a list of
    (first epoch, last epoch, median level), one for each maximal run of recorded epochs
    e at which |L(e + window) − L(e)| < tol, the run itself at least ``window`` long; the
    plateau extends to window epochs after the run's last epoch (the end of training at
    most). Near the end, L(e + window) is read at the last epoch. Consecutive plateaus
    whose levels differ by less than ``merge_tol`` are one plateau (a wiggle is no drop).
    epochs increasing and loss: real, 1-d, one length ≥ 1; window a positive int; tol and
    merge_tol finite ≥ 0."""
    epochs, loss = _curve("find_plateaus", epochs, loss)
    window = check_positive_int("window", window)
    tol = check_non_negative("tol", tol)
    merge_tol = check_non_negative("merge_tol", merge_tol)
    ahead = numpy.interp(numpy.minimum(epochs + window, epochs[-1]), epochs, loss)
    flat = numpy.abs(ahead - loss) < tol
    runs, start = [], None
    for k, is_flat in enumerate(numpy.append(flat, False)):
        if is_flat and start is None:
            start = k
        elif not is_flat and start is not None:
            if epochs[k - 1] - epochs[start] >= window or k == len(epochs):
                stop = numpy.searchsorted(epochs, min(epochs[k - 1] + window, epochs[-1]))
                runs.append((int(epochs[start]), int(epochs[stop]),
                             float(numpy.median(loss[start:stop + 1]))))
            start = None
    merged: list[tuple[int, int, float]] = []
    for first, last, level in runs:
        if merged and abs(level - merged[-1][2]) < merge_tol:
            a, _, _ = merged[-1]
            stop = numpy.searchsorted(epochs, last)
            level = float(numpy.median(loss[numpy.searchsorted(epochs, a):stop + 1]))
            merged[-1] = (a, last, level)
        else:
            merged.append((first, last, level))
    return merged


def analyse(traj: la.Trajectory, cov: la.Covariance, cfg: LinearDynamicsConfig, epochs: int):
    """Plateaus, drops, the measured level of each plateau m and the learning order.
    traj a Trajectory (train_gd), cov a Covariance of cfg.d, cfg a LinearDynamicsConfig,
    epochs the run's length (a positive int)."""
    la._check_record("traj", traj, (la.Trajectory,), "train_gd")
    if not isinstance(cfg, LinearDynamicsConfig):
        raise TypeError(f"cfg must be a LinearDynamicsConfig (linear_dynamics_config), got"
                        f" {type(cfg).__name__}")
    la._check_record("cov", cov, (la.Covariance,), "covariance")
    if cov.eigenvalues.shape[0] != cfg.d:
        raise ValueError(f"analyse: cov is of d = {cov.eigenvalues.shape[0]}, cfg.d = {cfg.d}")
    epochs = check_positive_int("epochs", epochs)
    trace = float(cov.eigenvalues.sum())
    window = max(int(cfg.flat_fraction * epochs), 2 * cfg.stride)
    plateaus = find_plateaus(traj.epochs, traj.heldout_loss, window, cfg.flat_tol * trace,
                             cfg.merge_tol * trace)
    p = projections(traj.effective, cov, cfg.n_context)
    measured: list = [None] * (cfg.d + 1)
    for first, last, level in plateaus:
        mid = numpy.searchsorted(traj.epochs, (first + last) // 2)
        m = int(numpy.sum(p[mid] > 0.5))
        if measured[m] is None:
            measured[m] = level
    crossing = [int(traj.epochs[numpy.argmax(p[:, k] > 0.5)]) if numpy.any(p[:, k] > 0.5)
                else None for k in range(cfg.d)]
    learned = [k for k in range(cfg.d) if crossing[k] is not None]
    order = [k + 1 for k in sorted(learned, key=lambda k: crossing[k])]
    return {"plateaus": plateaus, "drops": max(len(plateaus) - 1, 0), "measured": measured,
            "eigenvector_order": order, "learning_epochs": crossing, "projections": p}


def thin(epochs, max_points: int = 600) -> numpy.ndarray:
    """Indices of at most about ``max_points`` recorded epochs, evenly spaced in
    log(epoch + 1), the first and last always kept (for the JSON and the log-x plots).
    epochs increasing, non-empty; max_points a positive int."""
    epochs = _curve("thin", epochs)
    max_points = check_positive_int("max_points", max_points)
    grid = numpy.geomspace(1, epochs[-1] + 1, max_points) - 1
    keep = numpy.unique(numpy.searchsorted(epochs, grid).clip(0, len(epochs) - 1))
    return numpy.union1d(keep, [0, len(epochs) - 1])


def drop_time(traj: la.Trajectory, level: float) -> float | None:
    """The first recorded epoch whose held-out loss is below ``level`` (None if never).
    traj a Trajectory (train_gd), level a finite number."""
    la._check_record("traj", traj, (la.Trajectory,), "train_gd")
    number = (int, float, numpy.integer, numpy.floating)
    if isinstance(level, bool) or not isinstance(level, number) or not numpy.isfinite(level):
        raise ValueError(f"drop_time: level must be a finite number, got {level!r}")
    below = traj.heldout_loss < level
    return float(traj.epochs[numpy.argmax(below)]) if numpy.any(below) else None


def compute(cfg: LinearDynamicsConfig, seed: int, progress: Progress = QUIET) -> dict:
    """Train the models and measure everything the figure and the JSON hold."""
    seed = check_seed(seed)
    cov = la.covariance(cfg.d, seed=seed)
    N = cfg.n_context
    progress.update(f"{NAME}: statistics")
    train_data = la.sequences(cfg.n_train, N, cov, seed=seed + 1)
    train = la.feature_statistics(train_data)
    heldout = la.feature_statistics(la.sequences(cfg.n_heldout, N, cov, seed=seed + 2))
    levels = la.plateau_losses(cov.eigenvalues, N)

    progress.update(f"{NAME}: ATTN_S")
    s = la.train_gd(la.init_separate(cfg.d, cfg.s_heads, 1, cfg.s_init, seed=seed + 3),
                    train, heldout, cfg.s_lr, cfg.s_epochs, cfg.stride)
    progress.update(f"{NAME}: ATTN_M")
    m0 = la.init_merged(cfg.d, cfg.m_heads, cfg.m_init, seed=seed + 4)
    m = la.train_gd(m0, train, heldout, cfg.m_lr, cfg.m_epochs, cfg.stride)
    m_held = la.train_gd(m0, train, heldout, cfg.m_lr, cfg.m_epochs, 1, freeze_zero_blocks=True)
    progress.update(f"{NAME}: cubic-feature network")
    cubic_loss, _ = la.per_sequence_gd(la.merged_to_cubic(m0), train_data, cfg.m_lr, cfg.m_epochs)
    equivalence = float(numpy.max(numpy.abs(cubic_loss - m_held.train_loss) / m_held.train_loss))
    s_info, m_info = analyse(s, cov, cfg, cfg.s_epochs), analyse(m, cov, cfg, cfg.m_epochs)
    Gamma_inv = la.converged_predictor(cov.Lambda, N)
    m_matrix_error = float(numpy.linalg.norm(m.effective[-1] - Gamma_inv)
                           / numpy.linalg.norm(Gamma_inv))
    s_matrix_error = float(numpy.linalg.norm(s.effective[-1] - Gamma_inv)
                           / numpy.linalg.norm(Gamma_inv))

    progress.update(f"{NAME}: initialisation scales")
    s_mid, m_mid = (levels[0] + levels[1]) / 2, (levels[0] + levels[-1]) / 2
    s_times, m_times = [], []
    for scale in cfg.s_scales:
        run = la.train_gd(la.init_separate(cfg.d, cfg.s_heads, 1, scale, seed=seed + 3), train,
                          heldout, cfg.s_lr, cfg.scale_epochs, cfg.stride, stop_below=s_mid)
        s_times.append(drop_time(run, s_mid))
    for scale in cfg.m_scales:
        run = la.train_gd(la.init_merged(cfg.d, cfg.m_heads, scale, seed=seed + 4), train,
                          heldout, cfg.m_lr, cfg.scale_epochs, 1, stop_below=m_mid)
        m_times.append(drop_time(run, m_mid))
    s_ok = [(a, t) for a, t in zip(cfg.s_scales, s_times) if t is not None]
    m_ok = [(a, t) for a, t in zip(cfg.m_scales, m_times) if t is not None]
    s_slope = float(numpy.polyfit(numpy.log([a for a, _ in s_ok]), numpy.log([t for _, t in s_ok]),
                                  1)[0]) if len(s_ok) >= 2 else None
    m_slope = float(numpy.polyfit(numpy.log([1 / a for a, _ in m_ok]), [t for _, t in m_ok],
                                  1)[0]) if len(m_ok) >= 2 else None

    rank2 = None
    if cfg.rank2:
        progress.update(f"{NAME}: rank-2 ATTN_S")
        r2 = la.train_gd(la.init_separate(cfg.d, cfg.s_heads, 2, cfg.s_init, seed=seed + 5),
                         train, heldout, cfg.s_lr, cfg.s_epochs, cfg.stride)
        r2_info = analyse(r2, cov, cfg, cfg.s_epochs)
        k = thin(r2.epochs)
        rank2 = {"epochs": r2.epochs[k], "heldout_loss": r2.heldout_loss[k],
                 "plateau_loss_measured": r2_info["measured"], "drops": r2_info["drops"],
                 "plateaus": r2_info["plateaus"]}

    ks, km, kc = thin(s.epochs), thin(m.epochs), thin(m_held.epochs)
    measured = s_info["measured"]
    deviation = [None if x is None else abs(x - y) / y for x, y in zip(measured, levels)]
    headline = {
        "plateau_loss_measured": measured,
        "plateau_loss_predicted": levels,
        "max_plateau_deviation": max((x for x in deviation if x is not None), default=None),
        "attn_s_drops": s_info["drops"],
        "attn_m_drops": m_info["drops"],
        "eigenvector_order": s_info["eigenvector_order"],
        "attn_m_equivalence_max_diff": equivalence,
        "attn_m_matrix_relative_error": m_matrix_error,
        "attn_s_drop_time_loglog_slope": s_slope,
        "attn_m_drop_epochs_per_log_inverse_scale": m_slope,
    }
    return {
        "figure": NAME,
        "paper": ("Zhang, Singh, Latham & Saxe (2025), not Dherin et al.; the plateau and"
                  " drop-detection rules are the package's own"),
        "headline": headline,
        "config": asdict(cfg),
        "seed": seed,
        "model": {"seed": seed, "trained_here": "ATTN_M and ATTN_S, full-batch GD (see config)"},
        "eigenvalues": cov.eigenvalues,
        "n_context": N,
        "plateau_loss_predicted": levels,
        "plateau_loss_measured": measured,
        "plateau_relative_deviation": deviation,
        "plateaus_absent": [k for k, x in enumerate(measured) if x is None],
        "attn_s_plateaus": s_info["plateaus"],  # (first epoch, last epoch, level)
        "attn_m_plateaus": m_info["plateaus"],
        "attn_s_drops": s_info["drops"],
        "attn_m_drops": m_info["drops"],
        "eigenvector_order": s_info["eigenvector_order"],
        "attn_s_learning_epochs": s_info["learning_epochs"],
        "attn_m_equivalence_max_diff": equivalence,
        "attn_m_final_loss": float(m.heldout_loss[-1]),
        "attn_m_matrix_relative_error": m_matrix_error,
        "attn_s_matrix_relative_error": s_matrix_error,
        "drop_time": {"attn_s_scales": cfg.s_scales, "attn_s_epochs": s_times,
                      "attn_s_loglog_slope": s_slope,
                      "attn_m_scales": cfg.m_scales, "attn_m_epochs": m_times,
                      "attn_m_epochs_per_log_inverse_scale": m_slope},
        "rank2": rank2,
        "data": {
            "attn_s": {"epochs": s.epochs[ks], "heldout_loss": s.heldout_loss[ks],
                       "projections": s_info["projections"][ks]},
            "attn_m": {"epochs": m.epochs[km], "heldout_loss": m.heldout_loss[km]},
            "attn_m_held": {"epochs": m_held.epochs[kc], "train_loss": m_held.train_loss[kc]},
            "cubic": {"epochs": m_held.epochs[kc], "train_loss": cubic_loss[kc]},
        },
    }


def plot(record: dict, path) -> None:
    """Loss curves with the plateau levels, the eigenvector projections, drop times."""
    n_panels = 4 if record["rank2"] else 3
    fig, axes = new_figure(n_panels, width=4.6, height=3.6)
    curves, levels = record["data"], record["plateau_loss_predicted"]
    ax = axes[0]
    for m, level in enumerate(levels):
        ax.axhline(level, color="0.6", linestyle=":", linewidth=0.8)
        ax.text(1, level, f"$L(M_{m})$", fontsize=7, va="bottom", color="0.4")
    ax.plot(curves["attn_s"]["epochs"] + 1, curves["attn_s"]["heldout_loss"], color="C0",
            label="ATTN_S, rank 1 (held out)")
    ax.plot(curves["attn_m"]["epochs"] + 1, curves["attn_m"]["heldout_loss"], color="C1",
            label="ATTN_M (held out)")
    ax.plot(curves["attn_m_held"]["epochs"] + 1, curves["attn_m_held"]["train_loss"],
            color="C2", linewidth=2.5, alpha=0.5, label="ATTN_M, v̄ = ū = 0 (train)")
    ax.plot(curves["cubic"]["epochs"] + 1, curves["cubic"]["train_loss"], color="k",
            linestyle="--", linewidth=0.9, label="cubic-feature network (train)")
    ax.set_xscale("log")
    ax.set_xlabel("epoch + 1")
    ax.set_ylabel("loss")
    ax.set_title("Loss and the plateaus $L(M_m)$")
    ax.legend(loc="upper right", fontsize=7)
    ax = axes[1]
    p = numpy.asarray(curves["attn_s"]["projections"])
    for k in range(p.shape[1]):
        ax.plot(curves["attn_s"]["epochs"] + 1, p[:, k],
                label=f"$e_{k + 1}$, λ = {record['eigenvalues'][k]:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("epoch + 1")
    ax.set_ylabel(r"$e_d^\top A\, e_d / c_d$")
    ax.set_title("ATTN_S learns the eigenvectors in order")
    ax.legend(fontsize=7)
    ax = axes[2]
    drop = record["drop_time"]
    for key, label, color in (("attn_s", "ATTN_S (first drop)", "C0"), ("attn_m", "ATTN_M", "C1")):
        pairs = [(a, t) for a, t in zip(drop[f"{key}_scales"], drop[f"{key}_epochs"]) if t]
        ax.plot([a for a, _ in pairs], [t for _, t in pairs], "o-", color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initialisation scale")
    ax.set_ylabel("epoch of the drop")
    ax.set_title("Drop time against initialisation scale")
    ax.legend(fontsize=7)
    if record["rank2"]:
        ax = axes[3]
        for level in levels:
            ax.axhline(level, color="0.6", linestyle=":", linewidth=0.8)
        ax.plot(numpy.asarray(record["rank2"]["epochs"]) + 1, record["rank2"]["heldout_loss"],
                color="C3", label="ATTN_S, rank 2")
        ax.set_xscale("log")
        ax.set_xlabel("epoch + 1")
        ax.set_ylabel("loss")
        ax.set_title("ATTN_S, rank 2 (dotted: $L(M_m)$)")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def run(out_dir, seed: int = 0, fast: bool = False, progress: Progress = QUIET) -> dict:
    """Compute the figure, write linear-dynamics.png and linear-dynamics.json in
    ``out_dir``; returns the record (with ``fast`` and ``seconds``)."""
    start = time.perf_counter()
    out_dir = prepare_out_dir(out_dir)
    record = compute(linear_dynamics_config(fast), seed, progress)
    record["fast"] = fast
    progress.update(f"{NAME}: plotting")
    plot(record, out_dir / f"{NAME}.png")
    record["seconds"] = time.perf_counter() - start
    write_json(out_dir / f"{NAME}.json", record)
    return record
