"""One patch for all queries (the "thought" patch, docs/theory.md §7), tested.

One test per statement of minimal_icl.thought over random one-block models with every
switch (causal or not, skips, LayerNorm, softmax or linear attention), random contexts
and calibration queries. Exact identities are checked to IDENTITY_RTOL in float64.
"""

from __future__ import annotations

import numpy
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import configs, problems, random_params, residual_against

from minimal_icl import (
    IDENTITY_RTOL,
    TransformerConfig,
    forward,
    implicit_update,
    relative_residual,
)
from minimal_icl.block import BlockPatch, block_forward
from minimal_icl.thought import ThoughtPatch, compression_error, thought_patch

# A of full rank min(K, D), with margin: the smallest singular value of the calibration
# inputs at least GENERIC_RANK times the largest (about 18 % of the draws of these tests
# fall below, measured over 3 × 600 draws of one block and K = 1..12, most of them
# structurally rank-deficient: one head of width 1 without attention skip,
# LayerNorm over 2 features, where every a_k lies in one or two fixed directions).
GENERIC_RANK = 1e-3
# The same patched outputs rounded along two routes (compression_error's batch and one
# query at a time), then squared and averaged: they agree to TWO_ROUTES_RTOL relative (the
# thorough profile finds IDENTITY_RTOL of the outputs' squared size too tight for some draws)
TWO_ROUTES_RTOL = 1e-9


def one_block(**fixed):
    return configs(n_blocks=st.just(1), **{k: st.just(v) for k, v in fixed.items()})


def draw_queries(problem, K: int, seed_offset: int = 3) -> numpy.ndarray:
    """(B, K, D) standard normal calibration queries, drawn from the problem's seed."""
    rng = numpy.random.default_rng(problem.seed + seed_offset)
    return rng.standard_normal((problem.context.shape[0], K, problem.config.d_token))


def with_context(problem, query: numpy.ndarray) -> numpy.ndarray:
    """T_W(C, x) (B, D) for one query per prompt."""
    tokens = numpy.concatenate([problem.context, query[:, None, :]], axis=1)
    return forward(problem.params, problem.config, tokens)[0][:, -1, :]


def patched_alone(problem, patch, query: numpy.ndarray) -> numpy.ndarray:
    """T_{W+Δ*, b′+Δb′}(x) (B, D): the query alone through the patched block."""
    return forward(problem.params, problem.config, query[:, None, :], patches=(patch,))[0][:, 0, :]


def smallest_singular_ratio(inputs: numpy.ndarray) -> float:
    s = numpy.linalg.svd(inputs, compute_uv=False)  # (B, min(K, D))
    return float(numpy.min(s[:, -1] / s[:, 0]))


@given(problems(config=one_block()))
def test_one_calibration_query_gives_the_theorems_update(problem):
    """K = 1 and x_1 = x: A⁺ = aᵀ/‖a‖², so Δ* = W δu u_∅ᵀ/‖u_∅‖² and Δb′* = h_C − h_∅."""
    patch = thought_patch(problem.params, problem.config, problem.context, problem.query[:, None])
    update = implicit_update(problem.params, problem.config, problem.context, problem.query)[0]
    u_C = update.u_without + update.delta_u
    size = numpy.maximum(abs(u_C).max(-1), abs(update.u_without).max(-1))
    scale = size * abs(problem.params.blocks[0].mlp.W1).max() * abs(update.row).max(-1)
    assert residual_against(patch.delta_W, update.delta_W, scale) <= IDENTITY_RTOL
    out_size = abs(with_context(problem, problem.query)).max(-1)
    assert residual_against(patch.delta_b, update.delta_b, out_size + size) <= IDENTITY_RTOL


@given(problems(config=one_block(mlp_skip=False)), st.data())
def test_at_most_D_generic_queries_are_each_reproduced_exactly(problem, data):
    """K ≤ D and A of full column rank: A⁺A = I, so Δ* a_k = u_k and the patched block
    reproduces T_W(C, x_k) on every calibration query (no MLP skip)."""
    K = data.draw(st.integers(1, problem.config.d_token))
    queries = draw_queries(problem, K)
    patch = thought_patch(problem.params, problem.config, problem.context, queries)
    assume(smallest_singular_ratio(patch.inputs) > GENERIC_RANK)
    for k in range(K):
        residual = relative_residual(with_context(problem, queries[:, k]),
                                     patched_alone(problem, patch, queries[:, k]))
        assert residual <= IDENTITY_RTOL, f"query {k} of {K}: residual {residual:.3e}"


@given(problems(config=one_block()), st.integers(1, 12))
def test_delta_W_is_the_minimum_norm_least_squares_fit(problem, K):
    """Δ* = U A⁺ is lstsq's minimum-norm solution of Aᵀ Δᵀ ≈ Uᵀ (an independent solver),
    and its rows lie in the span of the a_k (the minimum-norm property)."""
    queries = draw_queries(problem, K)
    patch = thought_patch(problem.params, problem.config, problem.context, queries)
    assume(smallest_singular_ratio(patch.inputs) > GENERIC_RANK)
    for b in range(queries.shape[0]):
        A, U = patch.inputs[b], patch.targets[b]  # (K, D), (K, M)
        reference = numpy.linalg.lstsq(A, U, rcond=None)[0].T  # (M, D)
        scale = abs(U).max() / numpy.linalg.svd(A, compute_uv=False)[-1] + abs(reference).max()
        assert abs(patch.delta_W[b] - reference).max() <= IDENTITY_RTOL * scale
        basis = numpy.linalg.svd(A, full_matrices=False)[2]  # (r, D): the row space of A
        outside = patch.delta_W[b] - patch.delta_W[b] @ basis.T @ basis
        assert abs(outside).max() <= IDENTITY_RTOL * scale


def calibration_errors(problem, patch, queries) -> numpy.ndarray:
    """T_{W+Δ*, b′+Δb′}(x_k) − T_W(C, x_k) (B, K, D), both runs laid out as
    ``thought_patch`` lays them out (the B·K queries as one batch), so that the two sides
    round the same way."""
    B, K, D = queries.shape
    alone = queries.reshape(B * K, 1, D)
    repeated = numpy.repeat(problem.context, K, axis=0)  # prompt b's context K times
    full, _ = forward(problem.params, problem.config,
                      numpy.concatenate([repeated, alone], axis=1), last_only=True)
    each = BlockPatch(numpy.repeat(patch.delta_W, K, axis=0), numpy.repeat(patch.delta_b, K, axis=0))
    patched, _ = forward(problem.params, problem.config, alone, patches=(each,))
    return (patched[:, 0] - full[:, -1]).reshape(B, K, D)


@given(problems(config=one_block(mlp_skip=True)), st.integers(1, 8))
def test_delta_b_minimises_the_calibration_output_error(problem, K):
    """With an MLP skip, Δb′* = mean_k [T_W(C, x_k) − T_{W+Δ*}(x_k)] minimises
    Σ_k ‖T_{W+Δ*, b′+Δb′}(x_k) − T_W(C, x_k)‖²: the errors sum to zero (the normal
    equation), and any other Δb′ does worse by K ‖Δb′ − Δb′*‖²."""
    queries = draw_queries(problem, K)
    patch = thought_patch(problem.params, problem.config, problem.context, queries)
    errors = calibration_errors(problem, patch, queries)
    size = max(abs(with_context(problem, queries[:, k])).max() for k in range(K))
    assert abs(errors.sum(axis=1)).max() <= K * IDENTITY_RTOL * size
    shift = numpy.random.default_rng(problem.seed).standard_normal(patch.delta_b.shape)
    moved_errors = calibration_errors(problem, patch._replace(delta_b=patch.delta_b + shift),
                                      queries)
    gain = (moved_errors ** 2).sum(axis=(1, 2)) - (errors ** 2).sum(axis=(1, 2))
    # a difference of two sums of squared errors: measured against their size, not the gain's
    scale = (moved_errors**2).sum(axis=(1, 2)) + (errors**2).sum(axis=(1, 2))
    assert numpy.all(abs(gain - K * (shift**2).sum(-1)) <= IDENTITY_RTOL * scale)


@given(problems(config=one_block(mlp_skip=True)), st.data())
def test_delta_b_is_the_mean_residual_shift_where_delta_W_is_exact(problem, data):
    """K ≤ D generic: Δ* is exact on the calibration queries, so Δb′* = mean_k (h_C − h_∅)."""
    K = data.draw(st.integers(1, problem.config.d_token))
    queries = draw_queries(problem, K)
    patch = thought_patch(problem.params, problem.config, problem.context, queries)
    assume(smallest_singular_ratio(patch.inputs) > GENERIC_RANK)
    shifts = []
    for k in range(K):
        tokens = numpy.concatenate([problem.context, queries[:, k:k + 1]], axis=1)
        h_C = forward(problem.params, problem.config, tokens)[1].blocks[0].h[:, -1]
        alone = block_forward(queries[:, k:k + 1], problem.params.blocks[0], problem.config)
        h_0 = alone[1].h[:, 0]
        shifts.append(h_C - h_0)
    mean = numpy.mean(shifts, axis=0)
    size = max(abs(with_context(problem, queries[:, k])).max() for k in range(K))
    assert abs(patch.delta_b - mean).max() <= IDENTITY_RTOL * size


@given(problems(config=one_block(), batch=st.integers(1, 2)), st.integers(1, 5))
def test_compression_error_against_its_references(problem, K):
    """The exact per-query patch has zero held-out error (a squared error, so rounding
    leaves IDENTITY_RTOL² of the outputs' squared size), the no-context error is
    mean ‖T_W(x) − T_W(C, x)‖², and every entry is the mean squared output distance."""
    calibration, test = draw_queries(problem, K), draw_queries(problem, 3, seed_offset=4)
    result = compression_error(problem.params, problem.config, problem.context, calibration,
                               test, n_calibration=tuple(range(1, K + 1)))
    targets = numpy.stack([with_context(problem, test[:, q]) for q in range(3)], axis=1)
    size = float((targets ** 2).sum(-1).mean())
    assert result.n_calibration == tuple(range(1, K + 1)) and len(result.thought) == K
    assert result.exact <= IDENTITY_RTOL**2 * size
    alone = numpy.stack([forward(problem.params, problem.config, test[:, q:q + 1])[0][:, 0]
                         for q in range(3)], axis=1)
    no_context = ((alone - targets) ** 2).sum(-1).mean()
    # a squared difference of outputs: its rounding scales with the outputs' squared size
    assert abs(result.no_context - no_context) <= IDENTITY_RTOL * size
    patch = thought_patch(problem.params, problem.config, problem.context, calibration)
    direct = numpy.stack([patched_alone(problem, patch, test[:, q]) for q in range(3)], axis=1)
    # the same patched outputs rounded along two routes, then squared (TWO_ROUTES_RTOL)
    assert numpy.isclose(result.thought[-1], ((direct - targets) ** 2).sum(-1).mean(),
                         rtol=TWO_ROUTES_RTOL, atol=IDENTITY_RTOL * size)


def test_layer_norm_with_zero_bias_is_exact_on_at_most_D_minus_1_queries():
    """With LN2's bias 0 every a_k = LN2(h) lies in the (D − 1)-dimensional space γ ⊙
    centred(ℝ^D): K = D − 1 generic queries are reproduced exactly, K = D are not (the
    module docstring's count of how many queries the fit can be exact on)."""
    from minimal_icl import init_params

    config = TransformerConfig(d_token=4, n_heads=2, d_head=2, d_mlp=16, activation="gelu",
                               attn_skip=True, layer_norm=True)
    params = init_params(config, seed=1)  # LayerNorm biases 0
    rng = numpy.random.default_rng(3)
    context = rng.standard_normal((3, 5, 4))
    for K, exact in ((3, True), (4, False)):
        queries = rng.standard_normal((3, K, 4))
        patch = thought_patch(params, config, context, queries)
        assert numpy.linalg.matrix_rank(patch.inputs[0]) == 3
        tokens = numpy.concatenate([numpy.repeat(context, K, axis=0),
                                    queries.reshape(3 * K, 1, 4)], axis=1)
        reference = forward(params, config, tokens)[0][:, -1]
        repeated = BlockPatch(numpy.repeat(patch.delta_W, K, 0), numpy.repeat(patch.delta_b, K, 0))
        patched = forward(params, config, queries.reshape(3 * K, 1, 4), patches=(repeated,))[0]
        residual = relative_residual(reference, patched[:, 0])
        assert (residual <= IDENTITY_RTOL) == exact, (K, residual)  # measured 4.0e-15, 0.24


def test_stacks_and_bad_arguments_are_refused():
    config = TransformerConfig(d_token=3, n_blocks=2)
    params = random_params(config, 0)
    rng = numpy.random.default_rng(0)
    context, queries = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3, 3))
    with pytest.raises(ValueError, match="fits one block's MLP, but config.n_blocks = 2"):
        thought_patch(params, config, context, queries)
    config = TransformerConfig(d_token=3)
    params = random_params(config, 0)
    assert isinstance(thought_patch(params, config, context, queries), ThoughtPatch)
    with pytest.raises(ValueError, match="calibration_queries hold 1 prompts but context holds 2"):
        thought_patch(params, config, context, queries[:1])
    with pytest.raises(ValueError, match="calibration_queries"):
        thought_patch(params, config, context, queries[:, 0])
    with pytest.raises(TypeError, match="share a dtype"):
        thought_patch(params, config, context, queries.astype(numpy.float32))
    with pytest.raises(ValueError, match=r"n_calibration entries must be ints in \[1, 3\]"):
        compression_error(params, config, context, queries, queries, n_calibration=(1, 4))


def test_thought_patch_on_each_backend(backend):
    """Array-API code: the same patch on every backend."""
    from minimal_icl.backend import tree_map

    config = TransformerConfig(d_token=4, d_mlp=6, attn_skip=True, mlp_skip=True, layer_norm=True)
    host = random_params(config, 2)
    rng = numpy.random.default_rng(2)
    context, queries = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 7, 4))
    expected = thought_patch(host, config, context, queries)
    got = thought_patch(tree_map(backend.asarray, host), config, backend.asarray(context),
                        backend.asarray(queries))
    for mine, theirs in zip(got, expected):
        assert relative_residual(backend.to_numpy(mine), theirs) <= IDENTITY_RTOL
