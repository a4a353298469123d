"""In-context regression prompts and the baselines (minimal_icl.data)."""

from __future__ import annotations

import itertools

import numpy
import pytest

from minimal_icl.data import (
    RegressionBatch,
    baseline_mse,
    default_batches_per_draw,
    least_squares_predict,
    mse,
    one_step_gd_mse,
    one_step_gd_predict,
    optimal_gd_step,
    prompt_tokens,
    regression_prompts,
    regression_stream,
    ridge_lambda,
    ridge_predict,
    zero_predict,
)
from minimal_icl.tolerances import IDENTITY_RTOL, relative_residual

# A label ⟨w, x⟩ against the same sum in another order: a few roundings of labels of
# size up to 3 (measured 2.2e-16).
LABEL_ATOL = 1e-14
# The sample standard deviation of 60 draws of label noise of σ = 0.5 lies in this band
# (its standard error is about 0.05; measured 0.53).
NOISE_STD_LOW, NOISE_STD_HIGH = 0.3, 0.7
# Prompts drawn in float32 against float64: one rounding to float32 (unit roundoff 6e-8;
# measured 5.5e-8).
FLOAT32_DRAW_RTOL = 1e-6
# Least squares on noiseless prompts against the target, absolute: float32 (measured
# 2.4e-7) and float64 (measured 4.9e-17).
LEAST_SQUARES_FLOAT32_ATOL, LEAST_SQUARES_ATOL = 1e-3, 1e-12
# A least-squares prediction through a linear solve against another formula: rounding
# amplified by the conditioning of X (measured 1.1e-14 at N = d = 2).
SOLVE_RTOL = 1e-10
# η* and the expected error in closed form against the fractions written out: a few
# roundings (measured 1.2e-16 and 2.5e-16).
CLOSED_FORM_RTOL = 1e-15
# A mean squared error that must be 0 but for rounding (least squares on noiseless
# prompts: measured 2e-31).
EXACT_MSE = 1e-20
# Monte-Carlo means against their expectations: about 3 standard errors at 50,000
# prompts (relative standard error 1.4 %; measured off by 0.09 %), about 2.3 at 20,000
# (2.1 % for one step of GD, 1.6 % for the zero predictor; measured 1.5 % and 0.2 %).
MC_RTOL_50K, MC_RTOL_20K = 0.04, 0.05


def test_prompt_layout_and_target():
    """tokens = [(x_j; ⟨w, x_j⟩) ..., (x_q; 0)], target = ⟨w, x_q⟩, views slice the tokens."""
    batch = regression_prompts(5, 7, 3, seed=1)
    assert batch.tokens.shape == (5, 8, 4)
    assert batch.target.shape == (5,) and batch.w.shape == (5, 3)
    assert batch.context.shape == (5, 7, 4) and batch.query.shape == (5, 4)
    assert batch.context_x.shape == (5, 7, 3) and batch.context_y.shape == (5, 7)
    assert batch.query_x.shape == (5, 3)
    for b, i in itertools.product(range(5), range(7)):
        expected = sum(batch.w[b, k] * batch.tokens[b, i, k] for k in range(3))
        assert abs(batch.tokens[b, i, 3] - expected) <= LABEL_ATOL
    for b in range(5):
        assert batch.tokens[b, -1, -1] == 0.0
        expected = sum(batch.w[b, k] * batch.tokens[b, -1, k] for k in range(3))
        assert abs(batch.target[b] - expected) <= LABEL_ATOL
    assert numpy.array_equal(batch.query, batch.tokens[:, -1, :])
    assert numpy.array_equal(
        prompt_tokens(batch.context_x, batch.context_y, batch.query_x), batch.tokens
    )


def test_seeding_is_reproducible_and_distinct():
    a = regression_prompts(4, 10, 2, seed=3)
    b = regression_prompts(4, 10, 2, seed=3)
    c = regression_prompts(4, 10, 2, seed=4)
    assert all(numpy.array_equal(x, y) for x, y in zip(a, b))
    assert not numpy.array_equal(a.tokens, c.tokens)
    # a Generator continues its stream: two draws differ
    rng = numpy.random.default_rng(0)
    assert not numpy.array_equal(
        regression_prompts(2, 3, 2, rng).tokens, regression_prompts(2, 3, 2, rng).tokens
    )


def test_label_noise_touches_context_labels_only():
    clean = regression_prompts(3, 20, 2, seed=5)
    noisy = regression_prompts(3, 20, 2, seed=5, noise=0.5)
    assert numpy.array_equal(clean.context_x, noisy.context_x)
    assert numpy.array_equal(clean.target, noisy.target)  # the target is noiseless
    assert numpy.all(noisy.tokens[:, -1, -1] == 0.0)
    residual = noisy.context_y - clean.context_y
    assert NOISE_STD_LOW < float(numpy.std(residual)) < NOISE_STD_HIGH


def test_stream_gives_fresh_batches():
    stream = regression_stream(3, 4, 2, seed=0, batches_per_draw=2)
    batches = [next(stream) for _ in range(5)]  # crosses two draws
    flat = numpy.concatenate([b.tokens for b in batches])
    assert flat.shape == (15, 5, 3)
    assert len({row.tobytes() for row in flat}) == 15  # no prompt repeated
    for batch in batches:
        labels = numpy.sum(batch.w * batch.query_x, axis=1)
        assert numpy.allclose(batch.target, labels, rtol=0, atol=LABEL_ATOL)
    # by default a draw holds up to 64 batches and about 2²⁰ numbers
    assert default_batches_per_draw(64, 50, 2) == 64
    assert default_batches_per_draw(256, 50, 15) == 2**20 // (256 * (51 * 15 + 15))
    assert default_batches_per_draw(10**6, 50, 2) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends_dtype_and_device_are_kept(backend, dtype):
    batch = regression_prompts(4, 6, 2, seed=2, dtype=dtype, xp=backend.xp, device=backend.device)
    reference = regression_prompts(4, 6, 2, seed=2)
    for name, value in zip(batch._fields, batch):
        assert value.dtype == getattr(backend.xp, dtype), name
        if backend.device is not None:
            assert value.device == backend.device
        tol = FLOAT32_DRAW_RTOL if dtype == "float32" else 0.0
        assert numpy.allclose(backend.to_numpy(value), getattr(reference, name), rtol=tol, atol=tol)
    # every baseline stays in the batch's namespace and dtype
    for prediction in (
        zero_predict(batch),
        one_step_gd_predict(batch),
        least_squares_predict(batch),
        ridge_predict(batch, 0.1),
    ):
        assert prediction.shape == (4,) and prediction.dtype == getattr(backend.xp, dtype)
    assert numpy.allclose(
        backend.to_numpy(least_squares_predict(batch)),
        backend.to_numpy(batch.target),
        rtol=0,
        atol=LEAST_SQUARES_FLOAT32_ATOL if dtype == "float32" else LEAST_SQUARES_ATOL,
    )
    stream_batch = next(
        regression_stream(2, 3, 2, seed=0, dtype=dtype, xp=backend.xp, device=backend.device)
    )
    assert stream_batch.tokens.dtype == getattr(backend.xp, dtype)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0, n_context=5, d=2), "batch_size"),
        (dict(batch_size=2, n_context=-1, d=2), "n_context"),
        (dict(batch_size=2, n_context=5, d=2.5), "d must"),
        (dict(batch_size=True, n_context=5, d=2), "batch_size"),
        (dict(batch_size=2, n_context=5, d=2, noise=-0.1), "noise"),
        (dict(batch_size=2, n_context=5, d=2, noise=float("nan")), "noise"),
        (dict(batch_size=2, n_context=5, d=2, seed=-1), "seed"),
    ],
)
def test_bad_sizes_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        regression_prompts(**kwargs)


def test_least_squares_is_exact_on_noiseless_prompts():
    for N, d in [(2, 2), (5, 3), (50, 2)]:
        batch = regression_prompts(20, N, d, seed=N)
        assert relative_residual(least_squares_predict(batch), batch.target) <= SOLVE_RTOL


def test_least_squares_minimum_norm_when_underdetermined():
    """N < d: ŵ is the minimum-norm interpolant, ŵ = Xᵀ (X Xᵀ)⁻¹ y."""
    batch = regression_prompts(6, 2, 5, seed=0)
    X, y = batch.context_x, batch.context_y
    w_hat = numpy.stack([X[b].T @ numpy.linalg.solve(X[b] @ X[b].T, y[b]) for b in range(6)])
    expected = numpy.sum(w_hat * batch.query_x, axis=1)
    assert relative_residual(least_squares_predict(batch), expected) <= SOLVE_RTOL


def test_one_step_gd_against_a_loop():
    """ŷ = ⟨θ_1, x_q⟩, θ_1 = θ_0 − η ∇L(θ_0), ∇L(θ_0) = (1/N) Σ (⟨θ_0, x_j⟩ − y_j) x_j: from
    θ_0 = 0 (the baseline, η* by default) and from a given θ_0."""
    batch = regression_prompts(4, 9, 3, seed=7, noise=0.2)
    for eta, theta0 in ((None, None), (0.37, None), (0.37, [0.5, -1.0, 2.0])):
        step = optimal_gd_step(3, 9) if eta is None else eta
        expected = []
        for b in range(4):
            start = numpy.zeros(3) if theta0 is None else numpy.array(theta0)
            gradient = numpy.zeros(3)
            for j in range(9):
                x_j, y_j = batch.tokens[b, j, :3], batch.tokens[b, j, 3]
                gradient += (start @ x_j - y_j) * x_j / 9
            theta1 = start - step * gradient
            expected.append(theta1 @ batch.tokens[b, -1, :3])
        assert (
            relative_residual(one_step_gd_predict(batch, eta, theta0), numpy.array(expected))
            <= IDENTITY_RTOL
        )
    with pytest.raises(ValueError, match="eta"):
        one_step_gd_predict(batch, float("nan"))
    with pytest.raises(ValueError, match="theta0 must have shape"):
        one_step_gd_predict(batch, 0.1, [1.0, 2.0])


def test_prompt_tokens_puts_query_y_in_the_label_slot():
    """prompt_tokens(x, y, x_q, y_q) = [(x_j; y_j) ..., (x_q; y_q)], y_q = 0 by default."""
    batch = regression_prompts(3, 4, 2, seed=5)
    query_y = numpy.array([1.5, -2.0, 0.25])
    tokens = prompt_tokens(batch.context_x, batch.context_y, batch.query_x, query_y)
    assert numpy.array_equal(tokens[:, :-1], batch.context)
    assert numpy.array_equal(tokens[:, -1, :-1], batch.query_x)
    assert numpy.array_equal(tokens[:, -1, -1], query_y)
    with pytest.raises(ValueError, match="context_y"):
        prompt_tokens(batch.context_x, batch.context_y[:, :3], batch.query_x)
    with pytest.raises(ValueError, match="query_y"):
        prompt_tokens(batch.context_x, batch.context_y, batch.query_x, query_y[:2])


@pytest.mark.parametrize(
    ("args", "match"),
    [((0, 50, 0.5), "d must be a positive int"), ((2, 0, 0.5), "n_context must be a positive int"),
     ((2, 50, float("nan")), "eta must be a finite float"),
     ((2, 50, -1.0), "eta must be a finite float"),
     ((2.0, 50), "d must be a positive int")],
)  # fmt: skip
def test_one_step_gd_mse_checks_its_arguments(args, match):
    """d = 0 gave 0.0, N = 0 a ZeroDivisionError, η = NaN a NaN, η < 0 a number for a step
    the package refuses elsewhere (one_step_gd_predict)."""
    with pytest.raises(ValueError, match=match):
        one_step_gd_mse(*args)


def test_optimal_step_and_its_expected_error():
    assert optimal_gd_step(2, 50) == pytest.approx(50 / 53, rel=CLOSED_FORM_RTOL)
    assert one_step_gd_mse(2, 50) == pytest.approx(2 * 3 / 53, rel=CLOSED_FORM_RTOL)
    # η* minimises the closed-form expected error
    grid = numpy.linspace(0.5, 1.2, 141)
    errors = [one_step_gd_mse(2, 50, eta) for eta in grid]
    assert abs(grid[int(numpy.argmin(errors))] - 50 / 53) <= grid[1] - grid[0]  # one step
    # and the formula agrees with a Monte-Carlo estimate (50k prompts: 1.4 % standard error)
    batch = regression_prompts(50_000, 50, 2, seed=11)
    measured = mse(one_step_gd_predict(batch), batch.target)
    assert measured == pytest.approx(6 / 53, rel=MC_RTOL_50K)


def test_ridge_is_the_posterior_mean_and_tends_to_least_squares():
    batch = regression_prompts(5, 8, 3, seed=3, noise=0.3)
    lam = ridge_lambda(0.3, prior_std=2.0)
    assert lam == pytest.approx(0.09 / 4.0)
    X, y = batch.context_x, batch.context_y
    expected = [
        numpy.linalg.solve(X[b].T @ X[b] + lam * numpy.eye(3), X[b].T @ y[b]) @ batch.query_x[b]
        for b in range(5)
    ]
    ridge = ridge_predict(batch, lam)
    assert relative_residual(ridge, numpy.array(expected)) <= IDENTITY_RTOL
    # the posterior mean by Gaussian conditioning, another formula: w ~ N(0, τ² I) and
    # y = X w + σ ε give E[w | y] = τ² Xᵀ (τ² X Xᵀ + σ² I)⁻¹ y, here with τ = 2, σ = 0.3
    posterior = [
        4.0 * X[b].T @ numpy.linalg.solve(4.0 * X[b] @ X[b].T + 0.09 * numpy.eye(8), y[b])
        @ batch.query_x[b]
        for b in range(5)
    ]
    assert relative_residual(ridge, numpy.array(posterior)) <= IDENTITY_RTOL
    ridge_0 = ridge_predict(batch, 0.0)
    assert relative_residual(ridge_0, least_squares_predict(batch)) <= SOLVE_RTOL
    with pytest.raises(ValueError, match="lambda"):
        ridge_predict(batch, -1.0)


def test_baseline_table_on_the_paper_setting():
    batch = regression_prompts(20_000, 50, 2, seed=0)
    table = baseline_mse(batch)
    assert set(table) == {"zero", "one_step_gd", "least_squares"}
    assert table["zero"] == pytest.approx(2.0, rel=MC_RTOL_20K)  # E⟨w, x⟩² = d
    assert table["one_step_gd"] == pytest.approx(6 / 53, rel=MC_RTOL_20K)
    assert table["least_squares"] <= EXACT_MSE
    assert numpy.all(zero_predict(batch) == 0.0)
    assert "ridge" in baseline_mse(regression_prompts(10, 5, 2, seed=0, noise=0.1), noise=0.1)
    with pytest.raises(ValueError, match="shape"):
        mse(batch.target[:3], batch.target)
    assert isinstance(batch, RegressionBatch)
