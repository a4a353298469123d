"""In-context linear regression prompts and the baselines a trained model is measured against.

A prompt (Dherin et al. 2025, section 4; Garg et al. 2022) holds N pairs of one random
linear task and a query:

    w, x_1, ..., x_N, x_q ~ N(0, I_d)              fresh for every prompt
    y_j = ⟨w, x_j⟩ + independent noise ~ N(0, σ²)  (σ = 0: noiseless, the paper's setting)
    tokens = [(x_1; y_1), ..., (x_N; y_N), (x_q; 0)]          (N+1, d+1)
    target y_q = ⟨w, x_q⟩                            the noiseless value at the query

The model's prediction is the last coordinate of its output at the query token.

Baselines, each a function of a batch (docs/theory.md §6):

    zero             ŷ = 0                                   MSE = E⟨w, x_q⟩² = d
    one step of GD   ŷ = η x_qᵀ (1/N) Σ_j y_j x_j  (from θ_0 = 0)
                     η* = 1 / (1 + (d+1)/N)                  MSE = d (d+1) / (N+d+1)
    least squares    ŵ = argmin_v Σ_j (⟨v, x_j⟩ − y_j)²      (minimum norm if N < d)
    ridge            ŵ = (XᵀX + λI)⁻¹ Xᵀy,  λ = σ²/τ²        the posterior mean for w ~ N(0, τ²I)

with X = [x_1 .. x_N]ᵀ (N, d) and y = (y_1, .., y_N) the context's inputs and labels.

The MSE of one GD step is the expected error E‖(η XᵀX/N − I) w‖² (noiseless labels;
XᵀX/N = (1/N) Σ_j x_j x_jᵀ), = d [η² (1 + (d+1)/N) − 2η + 1] because E XᵀX/N = I and
E tr (XᵀX/N)² = d (1 + (d+1)/N) for Gaussian x; η* minimises it (Zhang, Frei & Bartlett
2024, with Λ = I; the MSEs of the table are these expectations).

Random numbers are drawn on the host with ``numpy.random.default_rng`` and then moved
with ``xp.asarray``: one seed gives the same prompts on every backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy

from .backend import Array, namespace, resolve_dtype
from .validation import (
    check_batch,
    check_batch_finite,
    check_batch_tokens,
    check_device,
    check_float_dtype,
    check_generator,
    check_namespace,
    check_non_negative,
    check_positive_float,
    check_positive_int,
    check_prediction_finite,
    check_prompt_parts,
    check_result_finite,
    check_step_size,
    check_theta0,
)


class RegressionBatch(NamedTuple):
    """B in-context regression prompts with N context pairs in dimension d (D = d + 1).

    The properties slice ``tokens``; tokens that are not an array with three axes (a
    list of lists) get a ValueError naming ``batch.tokens`` (:func:`check_batch_tokens`).
    """

    tokens: Array  # (B, N+1, D)  (x_j; y_j) for j = 1..N, then (x_q; 0)
    target: Array  # (B,)         ⟨w, x_q⟩, without label noise
    w: Array  # (B, d)            the task of each prompt

    @property
    def context(self) -> Array:
        """The N context tokens (x_j; y_j), (B, N, D)."""
        check_batch_tokens(self.tokens)
        return self.tokens[:, :-1, :]

    @property
    def query(self) -> Array:
        """The query token (x_q; 0), (B, D)."""
        check_batch_tokens(self.tokens)
        return self.tokens[:, -1, :]

    @property
    def context_x(self) -> Array:
        """The context inputs x_j, (B, N, d)."""
        check_batch_tokens(self.tokens)
        return self.tokens[:, :-1, :-1]

    @property
    def context_y(self) -> Array:
        """The context labels y_j, (B, N)."""
        check_batch_tokens(self.tokens)
        return self.tokens[:, :-1, -1]

    @property
    def query_x(self) -> Array:
        """The query input x_q, (B, d)."""
        check_batch_tokens(self.tokens)
        return self.tokens[:, -1, :-1]


# -- sampling --------------------------------------------------------------------------


def _draw_host(rng, n_prompts: int, n_context: int, d: int, noise: float):
    """Draw the prompts on the host as float64 NumPy arrays: (tokens, target, w)."""
    w = rng.standard_normal((n_prompts, d))  # (B, d)
    x = rng.standard_normal((n_prompts, n_context + 1, d))  # (B, N+1, d), the query last
    y = numpy.matmul(x, w[:, :, None])[:, :, 0]  # (B, N+1)  ⟨w, x_j⟩, the query's last
    target = y[:, -1].copy()  # (B,)
    if noise > 0.0:
        y[:, :-1] += noise * rng.standard_normal((n_prompts, n_context))
    y[:, -1] = 0.0  # the query's label slot is empty
    tokens = numpy.concatenate([x, y[:, :, None]], axis=2)  # (B, N+1, d+1)
    return tokens, target, w


def _to_batch(tokens, target, w, dtype, xp, device) -> RegressionBatch:
    if xp is None:
        xp = numpy
    dtype = resolve_dtype(xp, dtype)
    return RegressionBatch(
        tokens=xp.asarray(tokens, dtype=dtype, device=device),
        target=xp.asarray(target, dtype=dtype, device=device),
        w=xp.asarray(w, dtype=dtype, device=device),
    )


def regression_prompts(
    batch_size: int,
    n_context: int,
    d: int,
    seed=0,
    noise: float = 0.0,
    dtype=numpy.float64,
    xp=None,
    device=None,
) -> RegressionBatch:
    """Draw ``batch_size`` prompts of ``n_context`` pairs in dimension ``d``.

    Args:
        seed: an int ≥ 0, or a ``numpy.random.Generator`` to continue drawing from.
        noise: σ, the standard deviation of the label noise on the context labels.
        dtype, xp, device: the arrays are created with this dtype in namespace ``xp``
            (default NumPy) on ``device``.

    Returns a :class:`RegressionBatch`: tokens (B, N+1, d+1), target (B,), w (B, d).
    """
    batch_size = check_positive_int("batch_size", batch_size)
    n_context = check_positive_int("n_context", n_context)
    d = check_positive_int("d", d)
    noise = check_non_negative("noise", noise)
    xp = check_namespace(xp)
    check_device(xp, device)
    dtype = check_float_dtype(xp, dtype)
    tokens, target, w = _draw_host(check_generator(seed), batch_size, n_context, d, noise)
    return _to_batch(tokens, target, w, dtype, xp, device)


def default_batches_per_draw(batch_size: int, n_context: int, d: int) -> int:
    """How many batches :func:`regression_stream` draws at once: up to 64, and about 2²⁰
    random numbers at most (larger draws gain nothing and cost memory), but always one
    batch, however large."""
    per_batch = batch_size * ((n_context + 1) * d + d)
    return max(1, min(64, 2**20 // per_batch))


def regression_stream(
    batch_size: int,
    n_context: int,
    d: int,
    seed=0,
    noise: float = 0.0,
    dtype=numpy.float64,
    xp=None,
    device=None,
    batches_per_draw: int | None = None,
) -> Iterator[RegressionBatch]:
    """An endless stream of fresh batches: no prompt is ever repeated.

    The host draws ``batches_per_draw`` batches with one call per random array and then
    hands them out one by one, which spreads the per-call overhead of a draw over many
    training steps. By default (None) a draw holds up to 64 batches and about 2²⁰
    random numbers (:func:`default_batches_per_draw`). The arguments are checked when
    the stream is made, not at the first batch.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    n_context = check_positive_int("n_context", n_context)
    d = check_positive_int("d", d)
    if batches_per_draw is None:
        batches_per_draw = default_batches_per_draw(batch_size, n_context, d)
    batches_per_draw = check_positive_int("batches_per_draw", batches_per_draw)
    noise = check_non_negative("noise", noise)
    rng = check_generator(seed)
    xp = check_namespace(xp)
    check_device(xp, device)
    dtype = check_float_dtype(xp, dtype)
    return _stream(rng, batch_size, n_context, d, noise, dtype, xp, device, batches_per_draw)


def _stream(rng, batch_size, n_context, d, noise, dtype, xp, device, batches_per_draw):
    """The generator behind :func:`regression_stream`."""
    while True:
        tokens, target, w = _draw_host(rng, batch_size * batches_per_draw, n_context, d, noise)
        pool = _to_batch(tokens, target, w, dtype, xp, device)
        for i in range(batches_per_draw):
            part = slice(i * batch_size, (i + 1) * batch_size)
            yield RegressionBatch(pool.tokens[part, ...], pool.target[part], pool.w[part, ...])


def prompt_tokens(
    context_x: Array, context_y: Array, query_x: Array, query_y: Array | None = None
) -> Array:
    """Assemble tokens [(x_1; y_1) ... (x_N; y_N) (x_q; y_q)] from their parts, (B, N+1, d+1).

    Shapes: context_x (B, N, d), context_y (B, N), query_x (B, d), query_y (B,).
    query_y is what the query's label slot holds: 0 by default (the regression prompts);
    von Oswald's construction puts the initial prediction ⟨θ_0, x_q⟩ there
    (:func:`minimal_icl.von_oswald.von_oswald_predict`).
    """
    check_prompt_parts(context_x, context_y, query_x, query_y)
    xp = namespace(context_x, context_y, query_x)
    B = context_x.shape[0]
    if query_y is None:
        query_y = xp.zeros((B,), dtype=query_x.dtype, device=query_x.device)
    context = xp.concat([context_x, context_y[..., None]], axis=-1)  # (B, N, D)
    query = xp.concat([query_x, query_y[:, None]], axis=-1)  # (B, D)
    return xp.concat([context, query[:, None, :]], axis=1)  # (B, N+1, D)


# -- baselines -------------------------------------------------------------------------


def optimal_gd_step(d: int, n_context: int) -> float:
    """η* = 1 / (1 + (d+1)/N): the best step of one GD step from θ_0 = 0 for x ~ N(0, I_d)."""
    d = check_positive_int("d", d)
    n_context = check_positive_int("n_context", n_context)
    return 1.0 / (1.0 + (d + 1) / n_context)


def one_step_gd_mse(d: int, n_context: int, eta: float | None = None) -> float:
    """Expected MSE of one GD step with step η on noiseless prompts:

    E (ŷ − ⟨w, x_q⟩)² = d [η² (1 + (d+1)/N) − 2η + 1],   = d (d+1)/(N+d+1) at η*.
    """
    d = check_positive_int("d", d)
    n_context = check_positive_int("n_context", n_context)
    eta = optimal_gd_step(d, n_context) if eta is None else check_step_size(eta)
    return d * (eta * eta * (1.0 + (d + 1) / n_context) - 2.0 * eta + 1.0)


def zero_predict(batch: RegressionBatch) -> Array:
    """ŷ = 0 for every prompt, (B,)."""
    check_batch(batch)
    xp = namespace(batch.target)
    return xp.zeros_like(batch.target)


def theta0_row(theta0, d: int) -> numpy.ndarray:
    """θ_0, the initial weights of explicit gradient descent, as a host (1, d) float64 row.

    ``theta0``: None (θ_0 = 0), or d finite real numbers of shape (d,) or (1, d)
    (:func:`minimal_icl.validation.check_theta0`).
    """
    return check_theta0(theta0, d)


def one_step_gd_predict(batch: RegressionBatch, eta: float | None = None, theta0=None) -> Array:
    """One gradient step on the context's least squares, then predict at the query, (B,):

        L(θ) = (1/2N) Σ_j (⟨θ, x_j⟩ − y_j)²,   ∇L(θ_0) = (1/N) Σ_j (⟨θ_0, x_j⟩ − y_j) x_j,
        θ_1 = θ_0 − η ∇L(θ_0),                 ŷ = ⟨θ_1, x_q⟩.

    From θ_0 = 0 (``theta0=None``, the baseline) ŷ = η x_qᵀ (1/N) Σ_j y_j x_j.
    ``eta``: η, by default η* = 1/(1 + (d+1)/N); ``theta0``: θ_0 of shape (d,) or (1, d).
    The query's label slot is not read. One linear-attention layer computes the same
    prediction (von Oswald et al. 2023; :func:`minimal_icl.von_oswald.von_oswald_predict`).
    Raises ValueError unless η is finite and ≥ 0 (as ``von_oswald_predict``), and for a
    prediction that is not finite (one read): NaN or infinity in the tokens, or an
    overflow of finite ones (η or θ_0 near the largest float); TypeError for a θ_0 of
    complex numbers, booleans or text.
    """
    check_batch(batch)
    xp = namespace(batch.tokens)
    x, y, x_q = batch.context_x, batch.context_y, batch.query_x  # (B, N, d), (B, N), (B, d)
    N, d = x.shape[1], x.shape[2]
    if eta is None:
        eta = optimal_gd_step(d, N)
    eta = check_step_size(eta)  # a Python float keeps the batch's dtype
    theta0 = xp.asarray(theta0_row(theta0, d), dtype=x.dtype, device=x.device)  # (1, d)
    with numpy.errstate(over="ignore", invalid="ignore"):  # checked just below
        residual = xp.sum(x * theta0[:, None, :], axis=-1) - y  # (B, N)  ⟨θ_0, x_j⟩ − y_j
        gradient = xp.sum(residual[..., None] * x, axis=1) / N  # (B, d)  ∇L(θ_0)
        theta1 = theta0 - eta * gradient  # (B, d)
        prediction = xp.sum(theta1 * x_q, axis=-1)
    return check_prediction_finite(prediction, batch, "one_step_gd_predict")


def least_squares_predict(batch: RegressionBatch) -> Array:
    """ŷ = ⟨ŵ, x_q⟩ with ŵ = X⁺ y, the least-squares fit to the context, (B,).

    X⁺ is the pseudo-inverse, so for N < d ŵ is the minimum-norm interpolant. On
    noiseless prompts with N ≥ d (and X of full rank) ŵ = w and the error is zero to
    rounding (a mean squared error of about 1e-31 for d = 2, N = 50).
    """
    check_batch(batch)
    check_batch_finite(batch)
    xp = namespace(batch.tokens)
    x, y = batch.context_x, batch.context_y
    w_hat = (xp.linalg.pinv(x) @ xp.expand_dims(y, axis=-1))[..., 0]  # (B, d)
    return xp.sum(w_hat * batch.query_x, axis=-1)


def ridge_lambda(noise: float, prior_std: float = 1.0) -> float:
    """λ = σ²/τ² = (σ/τ)², the ridge penalty whose solution is the posterior mean for
    w ~ N(0, τ²I) (σ = ``noise``, τ = ``prior_std``).

    Computed as (σ/τ)², which depends on the ratio only (in σ²/τ² the square τ² loses
    digits below τ ≈ 1.5e-154 and is 0 below τ ≈ 1.5e-162). A ratio σ/τ above about
    1.3e154 makes λ overflow float64: a ValueError (as λ → ∞ ridge predicts 0, as
    ``zero_predict`` does). A ratio below about 1.5e-162 gives λ = 0, the nearest float.
    """
    noise = check_non_negative("noise", noise)
    prior_std = check_positive_float("prior_std", prior_std)
    ratio = noise / prior_std
    lam = ratio * ratio
    check_result_finite(
        numpy.asarray(lam), f"ridge_lambda(noise={noise!r}, prior_std={prior_std!r}): λ = (σ/τ)²")
    return lam


def ridge_predict(batch: RegressionBatch, lam: float) -> Array:
    """ŷ = ⟨ŵ, x_q⟩ with ŵ = (XᵀX + λI)⁻¹ Xᵀy, (B,). λ = 0 needs XᵀX invertible (N ≥ d).

    ValueError: λ = 0 with N < d context pairs (XᵀX has rank ≤ N < d), a singular
    XᵀX + λI (inputs that do not span ℝ^d, λ zero or below XᵀX's rounding), tokens that
    are not finite, and a result that overflowed (entries above about 1e154 overflow XᵀX).
    """
    lam = check_non_negative("ridge lambda", lam)
    check_batch(batch)
    N, d = batch.tokens.shape[1] - 1, batch.tokens.shape[2] - 1
    if lam == 0.0 and N < d:
        raise ValueError(
            f"ridge_predict: lam = 0 needs N ≥ d context pairs, got N = {N} < d = {d} (XᵀX has"
            " rank ≤ N and is singular): use lam > 0, or least_squares_predict for the"
            " minimum-norm fit (the limit λ → 0)"
        )
    check_batch_finite(batch)
    xp = namespace(batch.tokens)
    x, y = batch.context_x, batch.context_y
    eye = xp.eye(d, dtype=x.dtype, device=x.device)
    try:
        with numpy.errstate(over="ignore", invalid="ignore"):  # the result is checked below
            gram = x.mT @ x  # (B, d, d)
            rhs = x.mT @ xp.expand_dims(y, axis=-1)  # (B, d, 1)
            w_hat = xp.linalg.solve(gram + lam * eye, rhs)[..., 0]  # (B, d)
            prediction = xp.sum(w_hat * batch.query_x, axis=-1)
    except numpy.linalg.LinAlgError:
        raise ValueError(
            f"ridge_predict: XᵀX + λI is singular for some prompt (lam = {lam!r}): its context"
            " inputs do not span ℝ^d and λ is zero or below XᵀX's rounding. Use a larger lam,"
            " or least_squares_predict for the minimum-norm fit (the limit λ → 0)"
        ) from None
    return check_result_finite(prediction, "ridge_predict")


def mse(prediction: Array, target: Array) -> float:
    """The mean over the batch of (ŷ − y_q)² (``prediction`` ŷ, ``target`` y_q, equal
    shapes, else a ValueError), as a Python float."""
    if tuple(prediction.shape) != tuple(target.shape):
        raise ValueError(
            f"mse: prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
        )
    xp = namespace(prediction, target)
    diff = prediction - target
    return float(xp.mean(diff * diff))


def baseline_mse(batch: RegressionBatch, noise: float = 0.0) -> dict[str, float]:
    """The held-out MSE of every baseline on ``batch``:
    ``{"zero", "one_step_gd", "least_squares"}``, and ``"ridge"`` (λ = σ²) when σ > 0."""
    result = {
        "zero": mse(zero_predict(batch), batch.target),
        "one_step_gd": mse(one_step_gd_predict(batch), batch.target),
        "least_squares": mse(least_squares_predict(batch), batch.target),
    }
    if check_non_negative("noise", noise) > 0.0:
        result["ridge"] = mse(ridge_predict(batch, ridge_lambda(noise)), batch.target)
    return result
