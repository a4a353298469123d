"""summary.md: the headline numbers of a run next to what the paper reports."""

from __future__ import annotations

from pathlib import Path


def _e(value) -> str:
    return f"{value:.1e}"


def _f(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _mse(value) -> str:
    return f"{value:.3g}" if value >= 1e-6 else f"{value:.0e}"


def summary_rows(records: dict) -> list[tuple[str, str, str, str]]:
    """(figure, quantity, this run, paper) for every figure present in ``records``."""
    rows = []
    if "identity" in records:
        r = records["identity"]
        h, c = r["headline"], r["config"]
        grid = 2 * c["grid_half"] + 1
        where = f"{grid}×{grid} queries in [−{c['grid_limit']:g}, {c['grid_limit']:g}]², {c['n_tasks']} tasks"
        m = h["heldout_mse"]
        rows += [
            ("2 identity", f"max \\|T_W(C,x) − T_{{W+ΔW}}(x)\\|, float64 ({where})",
             f"{_e(h['max_abs_difference_float64'])} (mean {_e(h['mean_abs_difference_float64'])})",
             "not reported"),
            ("2 identity", "the same in float32 (parameters and data cast)",
             f"{_e(h['max_abs_difference_float32'])} (mean {_e(h['mean_abs_difference_float32'])})",
             "not verified (no float32 number found in the paper's text)"),
            ("2 identity", "max \\|val loss with prompt − val loss with patch\\| over training",
             _e(h["max_abs_val_loss_difference"]), "curves overlap (plot only)"),
            ("2 identity", "held-out MSE: trained model / zero / one GD step (η*) / least squares",
             f"{_mse(m['model'])} / {_mse(m['zero'])} / {_mse(m['one_step_gd'])} / {_mse(m['least_squares'])}",
             "not reported"),
            ("2 identity", "one GD step's MSE minus the model's, paired over the same prompts (± SE)",
             f"{h['heldout_excess_over_model']['one_step_gd']:+.4f}"
             f" ± {h['heldout_excess_over_model_se']['one_step_gd']:.4f}", "not reported"),
        ]
    if "convergence" in records:
        h = records["convergence"]["headline"]
        rows += [
            ("3 convergence", "log-log slope of ‖ΔW_{i+1} − ΔW_i‖, trained softmax",
             _f(h["slope_trained_softmax"], 2), "decay shown (plot only, no slope)"),
            ("3 convergence", "the same, untrained softmax (control)",
             _f(h["slope_random_softmax"], 2), "no such control"),
            ("3 convergence", "the same, untrained linear attention (control)",
             _f(h["slope_random_linear"], 2), "no such control"),
        ]
        if "slope_trained_rnn" in h:
            rows.append(
                ("3 convergence", "the same, trained recurrent block (package's own); each"
                 " prompt's spread along i / mean (median)",
                 f"{_f(h['slope_trained_rnn'], 2)}; {_f(h['spread_along_i_trained_rnn'], 2)}",
                 "later versions: large, oscillating (no number quoted here)"))
    if "finetune" in records:
        h = records["finetune"]["headline"]
        n = h["context_at_N"]
        rows += [
            ("4 finetune", f"test MSE at i = {n}: finetuned W, full-batch GD (ours) / one online"
             " SGD pass / implicit ΔW_i",
             f"{_mse(h['test_loss_finetuned_at_N'])} / {_mse(h['test_loss_online_sgd_at_N'])}"
             f" / {_mse(h['test_loss_implicit_at_N'])}",
             "both decrease with i (plot only)"),
            ("4 finetune", f"test MSE at i = {n}: zero / one GD step (η*) / least squares",
             f"{_mse(h['test_loss_zero_at_N'])} / {_mse(h['test_loss_one_step_gd_at_N'])}"
             f" / {_mse(h['test_loss_least_squares_at_N'])}", "no baselines"),
            ("4 finetune", f"cos_F(ΔW_ft, ΔW_i) at i = {n}, full-batch GD / online SGD"
             " (mean over i)",
             f"{_f(h['alignment_at_N'])} / {_f(h['alignment_online_sgd_at_N'])}"
             f" ({_f(h['alignment_mean_over_i'])} / {_f(h['alignment_online_sgd_mean_over_i'])})",
             "no number given"),
            ("4 finetune", f"cos_F ceilings at i = {n} for ΔW_i's row A(x): column in range(W) /"
             " any column (GD; SGD)",
             f"{_f(h['alignment_ceiling_at_N'])} / {_f(h['alignment_ceiling_row_only_at_N'])};"
             f" {_f(h['alignment_ceiling_online_sgd_at_N'])} /"
             f" {_f(h['alignment_ceiling_row_only_online_sgd_at_N'])}", "none"),
            ("4 finetune", f"correlation of the predictions at the query with ΔW_i's, i = {n}:"
             " GD / SGD",
             f"{_f(h['prediction_correlation_at_N'])} / {_f(h['prediction_correlation_online_sgd_at_N'])}",
             "none"),
            ("4 finetune", "online SGD learning rate (held-out choice, units 1/mean ‖A(x)‖²)",
             f"{h['online_sgd_lr']:g}", "not recovered"),
        ]
    if "deep" in records:
        h = records["deep"]["headline"]
        rows += [
            ("5 deep", "max per-block ‖output with context − query alone + patches‖ (4 pre-LN blocks)",
             f"{_e(h['max_difference'])} (relative {_e(h['max_relative_difference'])})",
             "later versions only; no number quoted here"),
            ("5 deep", "held-out MSE of the briefly trained stack / zero predictor",
             f"{_mse(h['heldout_mse']['model'])} / {_mse(h['heldout_mse']['zero'])}", "not reported"),
        ]
    if "dynamics" in records:
        h = records["dynamics"]["headline"]
        rows += [
            ("dynamics", "max relative residual of W_{i+1} = W_i − η_x ∇L_i(W_i), all steps",
             _e(h["max_step_residual"]), "stated exactly (Prop. 3.1), no figure"),
            ("dynamics", "max relative residual of T_{W_i}(x) = T_W(c_1..c_i, x), all steps",
             _e(h["max_output_residual"]), "stated exactly (Prop. 3.1), no figure"),
        ]
    if "positions" in records:
        h = records["positions"]["headline"]
        deep = " / ".join(_f(v, 2) for v in h["deep_cos_F_context_own_per_block"])
        rows += [
            ("positions", "max relative residual, every position's token alone + its patches"
             " / the last token alone + Innocenti & Achour's (paper and deep model)",
             f"{_e(h['max_residual_own'])} / {_e(h['max_residual_last_token'])}",
             "not in v1 (Innocenti & Achour 2025: exact)"),
            ("positions", "mean cos_F(ΔW_s, ΔW_t) between context positions, paper model:"
             " own-token patches / last-token variant",
             f"{_f(h['paper_cos_F_context_own'], 2)} / {_f(h['paper_cos_F_context_last_token'], 2)}",
             "not reported"),
            ("positions", "the same, deep model, blocks 1–4 (own-token patches); across blocks,"
             " mean \\|cos_F\\| (random rank 1)",
             f"{deep}; {_f(h['deep_abs_cos_F_across_blocks_mean'], 2)}"
             f" ({_f(h['random_rank_one_abs_cos_F'], 2)})", "not reported"),
        ]
    if "thought" in records:
        h = records["thought"]["headline"]
        K = h["K"]
        pick = [k for k in dict.fromkeys((1, 2, 3, 10, K[-1])) if k in K]
        mse = " / ".join(_mse(h["mse_thought"][K.index(k)]) for k in pick)
        rows += [
            ("thought", f"held-out MSE against y of the thought patch, K = {', '.join(map(str, pick))}",
             mse, "later versions: levels off near K ≈ 10–25 (secondary source, not checked)"),
            ("thought", "held-out MSE: exact per-query patch / no context (query alone)",
             f"{_mse(h['mse_exact_patch'])} / {_mse(h['mse_no_context'])}", "not reported"),
            ("thought", f"largest K fitted exactly on its calibration queries (rank of A ≤"
             f" {h['max_rank_A']})", str(h["largest_K_exact_on_calibration"]), "not reported"),
        ]
    if "order" in records:
        h = records["order"]["headline"]
        rows += [
            ("order", "spread of the prediction across 10 orders: one block, no mask / one causal"
             " block / implicit path W_N / full-batch GD",
             f"{_e(h['spread_noncausal_block'])} / {_e(h['spread_causal_block'])}"
             f" / {_e(h['spread_implicit_path'])} / {_e(h['spread_full_batch_gd'])}",
             "not in the paper (Shen et al. 2024's protocol)"),
            ("order", "the same: causal 2-block stack / recurrent block / online SGD (η = 0.1)",
             f"{_e(h['spread_causal_stack'])} / {_e(h['spread_rnn_block'])}"
             f" / {_e(h['spread_online_sgd'])}",
             "Shen et al.: ICL of LLMs several times more order-sensitive than GD"),
            ("order", "spread at i = N/2: implicit path / full-batch GD / online SGD",
             f"{_e(h['spread_implicit_path_at_half'])} / {_e(h['spread_full_batch_gd_at_half'])}"
             f" / {_e(h['spread_online_sgd_at_half'])}", "not reported"),
        ]
    if "linear-dynamics" in records:
        h = records["linear-dynamics"]["headline"]
        measured = ", ".join("–" if x is None else f"{x:.4f}" for x in h["plateau_loss_measured"])
        predicted = ", ".join(f"{x:.4f}" for x in h["plateau_loss_predicted"])
        rows += [
            ("linear-dynamics", "separate K, Q (rank 1): held-out loss at the plateaus M_0..M_d,"
             " measured; predicted", f"{measured}; {predicted}",
             "Zhang et al. 2025: plateaus at L(M_m) (levels re-derived here)"),
            ("linear-dynamics", "merged KQ: drops / epochs per e-fold of 1/init; separate K, Q:"
             " log-log slope of drop time against init (ours)",
             f"{h['attn_m_drops']} / {_f(h['attn_m_drop_epochs_per_log_inverse_scale'], 1)}"
             f" / {_f(h['attn_s_drop_time_loglog_slope'], 2)}",
             "one abrupt drop, time ∝ log(1/init)"),
        ]
    return rows


def summary_markdown(records: dict, seed: int, fast: bool, seconds: float) -> str:
    mode = "fast (smoke-test settings)" if fast else "full"
    lines = [
        "# Reproduction summary",
        "",
        f"Dherin et al. (2025), arXiv:2507.16003: headline numbers of a {mode} run, seed {seed},"
        f" {seconds:.0f} s in all. \"Paper\" says what the paper reports; where it gives no number"
        " it says so. Figures 2–4 use the paper's setting (d = 2, N = 50, one softmax block,"
        " no skips, no LayerNorm) with our widths and training (see paper_model.npz and each"
        " NAME.json).",
        "",
        "| figure | quantity | this run | paper |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(records)]
    lines += ["", "| figure | file | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {name}.png, {name}.json | {r['seconds']:.1f} |" for name, r in records.items()]
    return "\n".join(lines) + "\n"


def write_summary(out_dir, records: dict, seed: int, fast: bool, seconds: float) -> Path:
    path = Path(out_dir) / "summary.md"
    path.write_text(summary_markdown(records, seed, fast, seconds))
    return path
