"""Linear attention's training dynamics (Zhang, Singh, Latham & Saxe 2025), tested.

Gradient checks of ATTN_M and ATTN_S, the exact equivalence of ATTN_M with a two-layer
linear network on the cubic feature (prediction and gradient-descent trajectory), the fast
sufficient-statistics gradient descent against the per-sequence one, the analytic
plateau levels, and a short training run against the predicted plateaus and predictor.
"""

from __future__ import annotations

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimal_icl import linattn as la
from minimal_icl.experiments import linattn_dynamics as ld
from minimal_icl.gradcheck import assert_gradients_ok, check_gradients, check_layer
from minimal_icl.tolerances import GRADCHECK_RTOL, IDENTITY_RTOL, relative_residual

# The accuracy required of a measured plateau on held-out data (5 %): with
# P = 5,000 training and 20,000 held-out sequences the deviations measured over seeds
# 0–5 were 0.01–4 % (finite-P fit and held-out noise), 1.7 % at most for seed 0.
PLATEAU_RTOL = 0.05
# The trained ATTN_M matrix against Γ⁻¹ (relative Frobenius error): the training set's
# own optimum differs from the population one by O(√(F/P)) ≈ 0.14 for F = 100 features,
# P = 5,000; measured 0.02–0.05 over seeds 0–5.
MATRIX_RTOL = 0.1

# Thirty gradient-descent steps on two parametrizations of the same model (ATTN_M and the
# cubic-feature network) compound their different roundings: over 760 draws of the
# test's cases the losses agree to 2.5e-15 at worst, the weights to 3.9e-15 (an earlier
# version of the package measured 1.0e-12 and 8e-14; the bound was set then, a hundredfold
# above the losses' worst).
TRAJECTORY_RTOL = 1e-10
# A broken backward is wrong by far more than finite differences can err (the dropped
# dX path: measured 0.66; the correct gradients: 8e-11 at most).
BROKEN_ERROR = 1e-3
# The plateau levels quoted to 4 decimals: half a unit of the last decimal.
FOUR_DECIMALS = 5e-5
# A Monte-Carlo mean against its expectation, in standard errors (measured 0.25).
STANDARD_ERRORS = 4


def _perturbed(params, seed, size=0.3):
    rng = numpy.random.default_rng(seed)
    return type(params)(*(w + size * rng.standard_normal(w.shape) for w in params))


@pytest.mark.parametrize("kind", ["merged", "separate"])
def test_gradients_of_both_parametrizations(kind):
    """dX and every weight's gradient against finite differences (random upstream G)."""
    cov = la.covariance(3, seed=0)
    data = la.sequences(4, 5, cov, seed=1)
    if kind == "merged":
        params, fw, bw = la.init_merged(3, 2, 0.5, seed=2), la.merged_forward, la.merged_backward
    else:
        params = la.init_separate(3, 2, 2, 2.0, seed=2)
        fw, bw = la.separate_forward, la.separate_backward
    params = _perturbed(params, 3)  # the zero-initialised entries too
    errors = check_layer(lambda inp: fw(*inp), lambda g, cache: bw(g, cache), (data.X, params))
    assert len(errors) == 1 + len(params)
    assert_gradients_ok(errors, GRADCHECK_RTOL)


def test_the_checker_fails_on_a_broken_backward():
    """A backward that drops the G = X Xᵀ/N path of dX is caught: its dX fails the check
    (and assert_gradients_ok says so), W_V's gradient, left intact, passes."""
    data = la.sequences(3, 4, la.covariance(2, seed=0), seed=1)
    params = _perturbed(la.init_merged(2, 2, 0.5, seed=2), 3)

    def broken(g, cache):
        dX, grads = la.merged_backward(g, cache)
        dA = numpy.swapaxes(cache.params.W_V, 1, 2)[None] @ g[:, None]
        dG = numpy.sum(dA @ numpy.swapaxes(cache.KQX, 2, 3), axis=1)
        return dX - (dG + numpy.swapaxes(dG, 1, 2)) @ cache.X / 3, grads  # N = 3

    errors = check_layer(lambda inp: la.merged_forward(*inp), broken, (data.X, params))
    assert errors["0"] > BROKEN_ERROR and errors["1.W_V"] <= GRADCHECK_RTOL
    with pytest.raises(AssertionError, match="gradient check failed"):
        assert_gradients_ok(errors, GRADCHECK_RTOL)


def test_cubic_network_gradients():
    data = la.sequences(6, 4, la.covariance(3, seed=0), seed=1)
    z = la.cubic_feature(data.X)
    rng = numpy.random.default_rng(4)
    params = la.CubicParams(rng.standard_normal((3, 9)), rng.standard_normal(3))
    y, cache = la.cubic_forward(z, params)
    G = numpy.random.default_rng(5).standard_normal(y.shape)
    grads = la.cubic_backward(G, cache)
    errors = check_gradients(lambda p: float(la.cubic_forward(z, p)[0] @ G), params, grads)
    assert_gradients_ok(errors, GRADCHECK_RTOL)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), n_heads=st.integers(1, 4), n_context=st.integers(1, 9),
       seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 0.3, 1.0, 5.0]))
def test_attn_m_is_a_two_layer_network_on_the_cubic_feature(d, n_heads, n_context, seed, scale):
    """With v̄_i = ū_i = 0, ATTN_M's ŷ = Σ_i v_i βᵀ U_i x_q = w₂ᵀ W₁ vec(β x_qᵀ), any weights."""
    data = la.sequences(5, n_context, la.covariance(d, seed=seed), seed=seed + 1)
    params = la.init_merged(d, n_heads, scale, seed=seed + 2)
    out, _ = la.merged_forward(data.X, params)
    y_cubic, _ = la.cubic_forward(la.cubic_feature(data.X), la.merged_to_cubic(params))
    assert relative_residual(la.prediction(out), y_cubic) <= IDENTITY_RTOL
    # and the β-term reading of the effective matrix: ŷ = βᵀ A x_q
    X = data.X
    beta = X[:, :d, :-1] @ X[:, d, :-1, None] / n_context
    y_A = numpy.einsum("bi,ij,bj->b", beta[..., 0], la.effective_matrix(params), X[:, :d, -1])
    assert relative_residual(la.prediction(out), y_A) <= IDENTITY_RTOL


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n_heads=st.integers(1, 3), lr=st.sampled_from([0.05, 0.2]))
def test_gd_on_attn_m_and_on_the_cubic_network_has_the_same_losses(seed, n_heads, lr):
    """From corresponding weights, gradient descent on ATTN_M (zero blocks held at zero)
    and on the cubic-feature network gives the same loss at every step, to rounding
    (learning rates up to 0.2: at 0.5 some draws diverge)."""
    data = la.sequences(16, 6, la.covariance(3, seed=seed), seed=seed + 1)
    params = la.init_merged(3, n_heads, 0.5, seed=seed + 2)
    loss_m, final_m = la.per_sequence_gd(params, data, lr, 30, freeze_zero_blocks=True)
    loss_c, final_c = la.per_sequence_gd(la.merged_to_cubic(params), data, lr, 30)
    assert numpy.max(numpy.abs(loss_m - loss_c) / loss_c) <= TRAJECTORY_RTOL
    assert relative_residual(la.merged_to_cubic(final_m).W1, final_c.W1) <= IDENTITY_RTOL
    assert loss_m[-1] < loss_m[0]  # the run moved


@pytest.mark.parametrize("kind", ["merged", "separate"])
def test_statistics_gd_equals_per_sequence_gd(kind):
    """The fast full-batch GD (three data statistics) is the per-sequence GD, step by step."""
    cov = la.covariance(3, seed=1)
    data = la.sequences(40, 7, cov, seed=2)
    params = (la.init_merged(3, 2, 0.4, seed=3) if kind == "merged"
              else la.init_separate(3, 2, 1, 3.0, seed=3))
    params = _perturbed(params, 4, 0.2)
    stats = la.feature_statistics(data, chunk=16)  # several chunks
    fast = la.train_gd(params, stats, stats, 0.1, 25, stride=1)
    slow, final = la.per_sequence_gd(params, data, 0.1, 25)
    assert relative_residual(fast.train_loss, slow) <= IDENTITY_RTOL
    assert numpy.array_equal(fast.train_loss, fast.heldout_loss)
    for a, b in zip(fast.params, final):
        assert relative_residual(a, b) <= IDENTITY_RTOL


def test_plateau_levels_closed_form():
    """L(M_m) for D = 4, N = 31, λ = (0.4, 0.3, 0.2, 0.1): 1, 0.6406, 0.3774, 0.2098, 0.1360,
    and each is the population loss of principal component regression on m components;
    L(M_d) is the loss of Γ⁻¹, which is the minimum (no other matrix does better)."""
    levels = la.plateau_losses([0.1, 0.4, 0.2, 0.3], 31)
    numpy.testing.assert_allclose(levels, [1, 0.6406, 0.3774, 0.2098, 0.1360], atol=FOUR_DECIMALS)
    cov = la.covariance(4, seed=7, eigenvalues=[0.4, 0.3, 0.2, 0.1])
    for m in range(5):
        loss = la.predictor_loss(la.pcr_matrix(cov, 31, m), cov.Lambda, 31)
        assert abs(loss - levels[m]) <= IDENTITY_RTOL
    best = la.converged_predictor(cov.Lambda, 31)
    assert relative_residual(la.pcr_matrix(cov, 31, 4), best) <= IDENTITY_RTOL
    rng = numpy.random.default_rng(0)
    for _ in range(5):
        other = best + 0.01 * rng.standard_normal((4, 4))
        assert la.predictor_loss(other, cov.Lambda, 31) > levels[-1]


def test_covariance_is_its_eigendecomposition_with_an_orthogonal_Q():
    """Λ = Q diag(λ) Qᵀ with Q orthogonal (det Q = ±1: seeds give both signs) and, by
    default, λ ∝ (d, d−1, .., 1) with tr Λ = 1; given eigenvalues come back sorted."""
    signs = set()
    for seed in range(8):
        cov = la.covariance(3, seed=seed)
        Q, lam = cov.eigenvectors, cov.eigenvalues
        assert relative_residual(Q.T @ Q, numpy.eye(3)) <= IDENTITY_RTOL
        assert relative_residual(cov.Lambda, (Q * lam) @ Q.T) <= IDENTITY_RTOL
        assert relative_residual(cov.Lambda @ Q, Q * lam) <= IDENTITY_RTOL
        assert relative_residual(lam, numpy.array([3.0, 2.0, 1.0]) / 6.0) <= IDENTITY_RTOL
        assert abs(numpy.trace(cov.Lambda) - 1.0) <= IDENTITY_RTOL
        signs.add(int(numpy.round(numpy.linalg.det(Q))))
    assert signs == {1, -1}
    given_ = la.covariance(3, seed=0, eigenvalues=[0.2, 0.5, 0.3])
    assert numpy.array_equal(given_.eigenvalues, [0.5, 0.3, 0.2])


def test_predictor_loss_by_sampling():
    """The closed-form loss of ŷ = βᵀ A x_q against 200,000 sampled sequences, to
    STANDARD_ERRORS = 4 standard errors."""
    cov = la.covariance(3, seed=3)
    data = la.sequences(200_000, 5, cov, seed=4)
    A = la.pcr_matrix(cov, 5, 2) + 0.1
    X = data.X
    beta = X[:, :3, :-1] @ X[:, 3, :-1, None] / 5
    err = (numpy.einsum("bi,ij,bj->b", beta[..., 0], A, X[:, :3, -1]) - data.y_query) ** 2
    standard_error = err.std() / len(err) ** 0.5
    assert abs(err.mean() - la.predictor_loss(A, cov.Lambda, 5)) <= STANDARD_ERRORS * standard_error


def test_find_plateaus_on_a_staircase():
    epochs = numpy.arange(0, 1000, 10)
    loss = numpy.where(epochs < 300, 1.0, numpy.where(epochs < 600, 0.5, 0.2))
    runs = ld.find_plateaus(epochs, loss, 40, 0.01, 0.02)
    assert [round(level, 6) for _, _, level in runs] == [1.0, 0.5, 0.2]


def test_projections_are_one_at_the_converged_predictor():
    """p_d′ = e_d′ᵀ A e_d′ / c_d′ with c_d′ = λ_d′⁻¹ (1 + (1 + tr Λ/λ_d′)/N)⁻¹, the
    eigenvalues of Γ⁻¹: 1 on every eigenvector once A = Γ⁻¹, 0 at A = 0, ½ at A = Γ⁻¹/2."""
    cov = la.covariance(4, seed=2)
    Gamma_inv = la.converged_predictor(cov.Lambda, 31)
    p = ld.projections(numpy.stack([Gamma_inv, 0 * Gamma_inv, Gamma_inv / 2]), cov, 31)
    assert p.shape == (3, 4)
    assert relative_residual(p, numpy.array([[1.0] * 4, [0.0] * 4, [0.5] * 4])) <= IDENTITY_RTOL


def test_short_run_passes_the_plateaus_and_reaches_the_predictor():
    """P = 5,000, ATTN_S rank 1 (H = 5) and ATTN_M (H = 8), seed 0 (fast settings):
    ATTN_S shows d = 4 drops, learns the eigenvectors in decreasing-eigenvalue order and
    its held-out plateaus are within PLATEAU_RTOL of L(M_m); ATTN_M shows one drop and
    ends at Γ⁻¹ = (Λ + (Λ + tr Λ I)/N)⁻¹ within MATRIX_RTOL."""
    cfg = ld.LinearDynamicsConfig(n_train=5_000, n_heldout=20_000, s_init=0.126,
                                  s_epochs=12_000, s_scales=(0.126, 0.252),
                                  m_scales=(5.6e-6, 5.6e-4), scale_epochs=12_000, rank2=False)
    record = ld.compute(cfg, seed=0)
    levels = record["plateau_loss_predicted"]
    assert record["attn_s_drops"] == 4 and record["attn_m_drops"] == 1
    assert record["eigenvector_order"] == [1, 2, 3, 4]
    for measured, predicted in zip(record["plateau_loss_measured"], levels):
        assert abs(measured - predicted) <= PLATEAU_RTOL * predicted
    assert record["attn_m_matrix_relative_error"] <= MATRIX_RTOL
    assert abs(record["attn_m_final_loss"] - levels[-1]) <= PLATEAU_RTOL * levels[-1]
    assert record["attn_m_equivalence_max_diff"] <= TRAJECTORY_RTOL
    times = record["drop_time"]["attn_s_epochs"]
    assert times[1] < times[0]  # a larger initialisation drops earlier


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_heads"):
        la.init_merged(3, 0, 0.1)
    with pytest.raises(ValueError, match="scale"):
        la.init_separate(3, 2, 1, -1.0)
    with pytest.raises(ValueError, match="eigenvalues"):
        la.covariance(3, eigenvalues=[1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="X"):
        la.merged_forward(numpy.zeros((2, 5, 4)), la.init_merged(3, 1, 0.1))
    with pytest.raises(ValueError, match="m must be"):
        la.pcr_matrix(la.covariance(3), 5, 4)


def test_figure_writes_png_and_json_with_its_fields(tmp_path):
    """run(fast=True) writes linear-dynamics.png and .json holding the promised fields."""
    import json

    record = ld.run(tmp_path, seed=1, fast=True)
    assert (tmp_path / "linear-dynamics.png").stat().st_size > 0
    saved = json.loads((tmp_path / "linear-dynamics.json").read_text())
    for key in ("eigenvalues", "n_context", "plateau_loss_measured", "attn_m_equivalence_max_diff",
                "attn_m_drops", "attn_s_drops", "eigenvector_order", "headline", "seconds"):
        assert key in saved, key
    assert len(saved["plateau_loss_measured"]) == 5 and saved["n_context"] == 31
    assert record["headline"]["attn_m_equivalence_max_diff"] <= TRAJECTORY_RTOL


def test_bad_arguments_are_refused_by_name():
    """Inputs that used to run on silently (a string switch, a diverging or NaN run, a
    negative or infinite eigenvalue, an empty context) are refused with their name."""
    cov = la.covariance(3, seed=1)
    data = la.sequences(8, 5, cov, seed=2)
    stats = la.feature_statistics(data)
    merged = la.init_merged(3, 2, 0.5, seed=3)
    with pytest.raises(TypeError, match="freeze_zero_blocks must be True or False, got str 'no'"):
        la.train_gd(merged, stats, stats, 0.1, 3, freeze_zero_blocks="no")
    with numpy.errstate(over="ignore", invalid="ignore"):  # the run overflows on its way
        with pytest.raises(ValueError, match="gradient descent diverged at epoch .*lower the"):
            la.train_gd(merged, stats, stats, 1e6, 50)
        with pytest.raises(ValueError, match="gradient descent diverged at epoch"):
            la.per_sequence_gd(merged, data, 1e6, 50)
    with pytest.raises(ValueError, match="lr must be a finite float > 0, got nan"):
        la.per_sequence_gd(merged, data, float("nan"), 1)
    with pytest.raises(ValueError, match="epochs must be an int ≥ 0, got -1"):
        la.per_sequence_gd(merged, data, 0.1, -1)
    with pytest.raises(ValueError, match="eigenvalues must be a non-empty list of finite positive"):
        la.plateau_losses([1.0, -1.0], 5)
    with pytest.raises(ValueError, match="eigenvalues must be 2 finite positive numbers"):
        la.covariance(2, eigenvalues=[1.0, numpy.inf])
    with pytest.raises(ValueError, match=r"X must be an array \(B, d\+1, N\+1\) with N ≥ 1"):
        la.cubic_feature(data.X[:, :, :1])


def _linattn_world():
    cov = la.covariance(2, seed=1)
    data = la.sequences(6, 4, cov, seed=2)
    merged, separate = la.init_merged(2, 2, 0.5, seed=3), la.init_separate(2, 2, 1, 0.5, seed=4)
    return cov, data, la.feature_statistics(data), merged, separate, la.merged_to_cubic(merged)


# (id, call on (cov, data, stats, merged, separate, cubic), exception, message pattern)
WRONG_RECORDS = [
    ("forward-params-none", lambda c, x, s, m, p, q: la.merged_forward(x.X, None), TypeError,
     r"params must be a MergedParams \(init_merged\), got NoneType"),
    ("forward-other-parametrization", lambda c, x, s, m, p, q: la.separate_forward(x.X, m),
     TypeError, r"params must be a SeparateParams \(init_separate\), got MergedParams"),
    ("to-cubic-separate", lambda c, x, s, m, p, q: la.merged_to_cubic(p), TypeError,
     r"params must be a MergedParams \(init_merged\), got SeparateParams"),
    ("mask-tuple", lambda c, x, s, m, p, q: la.zero_block_mask(tuple(m)), TypeError,
     r"params must be a MergedParams or SeparateParams .*got tuple"),
    ("effective-W_KQ-shape", lambda c, x, s, m, p, q: la.effective_matrix(
        m._replace(W_KQ=m.W_KQ[:1])), ValueError,
     r"params\.W_KQ has shape \(1, 3, 3\), W_V's shape \(2, 3, 3\) needs \(2, 3, 3\)"),
    ("effective-W_Q-width", lambda c, x, s, m, p, q: la.effective_tensor(
        p._replace(W_Q=p.W_Q[..., :2])), ValueError, r"params\.W_Q has shape \(2, 1, 2\)"),
    ("int-weights", lambda c, x, s, m, p, q: la.effective_tensor(
        m._replace(W_V=m.W_V.astype(int))), TypeError, r"params\.W_V: dtype int64 is refused"),
    ("stats-none", lambda c, x, s, m, p, q: la.loss_from_statistics(m, None), TypeError,
     r"stats must be a FeatureStatistics \(feature_statistics\), got NoneType"),
    ("stats-of-other-d", lambda c, x, s, m, p, q: la.statistics_gradients(
        la.init_merged(3, 1, 0.1), s), ValueError,
     r"stats\.second has shape \(18, 18\), weights of d = 3 need \(48, 48\)"),
    ("train-gd-heldout-none", lambda c, x, s, m, p, q: la.train_gd(m, s, None, 0.1, 1),
     TypeError, r"heldout must be a FeatureStatistics"),
    ("train-gd-stop-below-text", lambda c, x, s, m, p, q: la.train_gd(m, s, s, 0.1, 1,
     stop_below="0.1"), ValueError, r"stop_below must be None or a number"),
    ("per-sequence-data-none", lambda c, x, s, m, p, q: la.per_sequence_gd(m, None, 0.1, 1),
     TypeError, r"data must be a Sequences \(sequences\), got NoneType"),
    ("per-sequence-cubic-other-d", lambda c, x, s, m, p, q: la.per_sequence_gd(
        la.merged_to_cubic(la.init_merged(3, 1, 0.1)), x, 0.1, 1), ValueError,
     r"data\.X has tokens of width 3, the CubicParams of d = 3 need d \+ 1 = 4"),
    ("cubic-forward-z-width", lambda c, x, s, m, p, q: la.cubic_forward(
        numpy.ones((3, 5)), q), ValueError, r"z must have shape \(B, d²\) = \(B, 4\)"),
    ("cubic-backward-no-cache", lambda c, x, s, m, p, q: la.cubic_backward(numpy.ones(6), None),
     TypeError, r"cache must be the cache that cubic_forward returned"),
    ("backward-dout-shape", lambda c, x, s, m, p, q: la.merged_backward(
        numpy.ones((2, 3, 3)), la.merged_forward(x.X, m)[1]), ValueError,
     r"dout must have the output's shape \(6, 3, 5\), got \(2, 3, 3\)"),
    ("backward-cache-of-other-layer", lambda c, x, s, m, p, q: la.separate_backward(
        numpy.ones((6, 3, 5)), la.merged_forward(x.X, m)[1]), TypeError,
     r"cache must be a SeparateCache \(what separate_forward returns\), got MergedCache"),
    ("prediction-vector", lambda c, x, s, m, p, q: la.prediction(numpy.ones(3)), ValueError,
     r"out must be a layer's output \(B, d\+1, N\+1\) .*got \(3,\)"),
    ("squared-error-shapes", lambda c, x, s, m, p, q: la.squared_error(
        numpy.ones(3), numpy.ones(4)), ValueError, r"y_query must have y_hat's shape \(3,\)"),
    ("int-tokens", lambda c, x, s, m, p, q: la.merged_forward(x.X.astype(int), m), TypeError,
     r"X: dtype int64 is refused"),
    ("sequences-cov-none", lambda c, x, s, m, p, q: la.sequences(3, 4, None), TypeError,
     r"cov must be a Covariance \(covariance\), got NoneType"),
    ("pcr-cov-matrix", lambda c, x, s, m, p, q: la.pcr_matrix(c.Lambda, 4, 1), TypeError,
     r"cov must be a Covariance"),
    ("predictor-A-shape", lambda c, x, s, m, p, q: la.predictor_loss(
        numpy.ones((3, 3)), c.Lambda, 4), ValueError, r"A must have Lambda's shape \(2, 2\)"),
    ("converged-Lambda-list", lambda c, x, s, m, p, q: la.converged_predictor([[1.0]], 4),
     ValueError, r"Lambda must be a square \(d, d\) array, got list"),
    ("statistics-chunk-zero", lambda c, x, s, m, p, q: la.feature_statistics(x, chunk=0),
     ValueError, r"chunk must be a positive int, got 0"),
    ("statistics-chunk-negative", lambda c, x, s, m, p, q: la.feature_statistics(x, chunk=-1),
     ValueError, r"chunk must be a positive int, got -1"),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in WRONG_RECORDS],
                         ids=[c[0] for c in WRONG_RECORDS])
def test_wrong_records_and_shapes_are_named(call, error, message):
    """A record of the wrong type or shape gets a TypeError or ValueError naming the
    argument (an AttributeError, an IndexError or NumPy's own message before; chunk = -1
    returned zero statistics)."""
    with pytest.raises(error, match=message):
        call(*_linattn_world())
