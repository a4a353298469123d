"""Proposition 3.1 (Dherin et al. 2025, v1) and the factorised form of its appendix, tested.

One test per statement over random one-block models with every switch (strategies.py).
Exact identities to IDENTITY_RTOL in float64; claims that two things DIFFER are checked
with GENERIC_GAP and drawn where they are generic (strategies.generic_one_block).
"""

from __future__ import annotations

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    GENERIC_BATCH,
    GENERIC_GAP,
    RANK_RTOL,
    configs,
    gaps,
    generic_one_block,
    one_block,
    problems,
    random_params,
    random_prompts,
    residual_against,
    stacks,
)

from minimal_icl import (
    IDENTITY_RTOL,
    DegenerateQueryError,
    TransformerConfig,
    factorised_path,
    forward,
    implicit_path,
    implicit_update,
    relative_residual,
)
from minimal_icl.backend import device, tree_map
from minimal_icl.block import block_forward
from minimal_icl.dynamics import prefix_states
from minimal_icl.gradcheck import assert_gradients_ok, check_gradients


def with_query(context, query):
    return numpy.concatenate([context, query[:, None, :]], axis=1)


def output_at_query(problem, tokens, patches=None):
    out, _ = forward(problem.params, problem.config, tokens, patches=patches)
    return out[:, -1, :]


def frobenius(X):
    return numpy.linalg.norm(X, axis=(-2, -1))


def norm(v):
    return numpy.linalg.norm(v, axis=-1)


def update_scale(W, update):
    """‖W‖ (‖u_C‖ + ‖u_∅‖) / ‖u_∅‖ per prompt: the size of the terms W u_C/‖u_∅‖ and
    W u_∅/‖u_∅‖ whose difference is ΔW (see strategies.residual_against)."""
    u_C = update.delta_u + update.u_without
    return numpy.linalg.norm(W) * (norm(u_C) + norm(update.u_without)) / norm(update.u_without)


# -- Proposition 3.1 --------------------------------------------------------------------


@given(problems(config=one_block()))
def test_theorem_path_weights_reproduce_every_prefix_output(problem):
    """T_{W_i}(x) = T_{W_0}(c_1..c_i, x) for every i = 0..N."""
    context, query = problem.context, problem.query
    path = implicit_path(problem.params, problem.config, context, query)
    for i in range(context.shape[1] + 1):
        expected = output_at_query(problem, with_query(context[:, :i], query))
        patched = output_at_query(problem, query[:, None, :], path.patch(i))
        assert relative_residual(expected, patched) <= IDENTITY_RTOL, i


@given(problems(config=one_block()))
def test_theorem_path_weights_are_the_prefix_rank1_updates(problem):
    """W_i = W_0 + ΔW_i: the path's weights are Theorem 2.2's update of each prefix
    c_1..c_i, as implicit_update computes it from separate runs."""
    config, params, context, query = problem[:4]
    path = implicit_path(params, config, context, query)
    W0 = params.blocks[0].mlp.W1
    _, alone = block_forward(query[:, None, :], params.blocks[0], config)
    h_scale = numpy.max(numpy.abs(alone.h[:, 0]), axis=-1)  # (B,) the size of h_∅
    for i in range(context.shape[1] + 1):
        (update,) = implicit_update(params, config, context[:, :i], query)
        assert relative_residual(path.weights(i), W0 + update.delta_W) <= IDENTITY_RTOL
        scale = h_scale + numpy.max(numpy.abs(update.delta_b), axis=-1)  # Δb′ = h_C − h_∅
        assert residual_against(path.update(i).delta_b, update.delta_b, scale) <= IDENTITY_RTOL


@given(problems(config=one_block()), st.data())
def test_theorem_consuming_a_token_is_a_gradient_step(problem, data):
    """W_{i+1} = W_i − η_x ∇L_i(W_i), η_x = 1/‖A(x)‖², with ∇L_i = G_i = W_0 (A_i − A_{i+1})
    A(x)ᵀ built here from separate runs of each prefix [c_1..c_i, x] (A_i the query's MLP
    input after i tokens), not from the path's own gradient; and L_i(W) = trace(G_iᵀ W)
    has that gradient (finite differences, random weights per prompt)."""
    config, params, context, query, _, seed = problem
    path = implicit_path(params, config, context, query)
    N = context.shape[1]
    W0 = params.blocks[0].mlp.W1
    A = [block_forward(with_query(context[:, :i], query), params.blocks[0], config)[1].u[:, -1]
         for i in range(N + 1)]  # A_i (B, D), A_0 = A(x)
    eta = 1.0 / numpy.sum(A[0] ** 2, axis=-1)  # (B,)
    for i in range(N):
        G = ((A[i] - A[i + 1]) @ W0.T)[:, :, None] * A[0][:, None, :]  # (B, M, D)
        # against the size of the terms subtracted: A_i and A_{i+1} can nearly cancel
        scale = (norm(A[i] @ W0.T) + norm(A[i + 1] @ W0.T)) * norm(A[0])  # (B,)
        assert residual_against(path.gradient(i), G, scale) <= IDENTITY_RTOL, i
        stepped = path.weights(i) - eta[:, None, None] * G
        assert relative_residual(path.weights(i + 1), stepped) <= IDENTITY_RTOL, i

    i = data.draw(st.integers(0, N - 1), label="i")
    rng = numpy.random.default_rng(seed)
    upstream = rng.standard_normal(context.shape[0])
    W = path.weights(i)

    def loss(W):
        return float(numpy.sum(upstream * path.loss(i, W)))

    errors = check_gradients(loss, W, upstream[:, None, None] * path.gradient(i))
    assert_gradients_ok(errors)


@given(problems(config=one_block()), st.integers(1, 8))
def test_theorem_step_size_depends_only_on_the_query(problem, other_N):
    """η_x = 1/‖A(x)‖², with A(x) the block's MLP input on the query alone; another
    context of another length gives the same η_x."""
    config, params, context, query, _, seed = problem
    path = implicit_path(params, config, context, query)
    _, alone = block_forward(query[:, None, :], params.blocks[0], config)
    assert (
        relative_residual(path.step_size, 1.0 / numpy.sum(alone.u[:, 0] ** 2, axis=-1))
        <= IDENTITY_RTOL
    )
    other_context, _ = random_prompts(config, seed + 7, context.shape[0], other_N)
    other = implicit_path(params, config, other_context, query)
    assert relative_residual(path.step_size, other.step_size) <= IDENTITY_RTOL


@given(problems(config=one_block()))
def test_theorem_path_stays_rank_one_with_right_factor_A_x(problem):
    """All W_i − W_0 share the right factor A(x)ᵀ: the updates ΔW_i of every
    prefix (separate implicit_update calls), stacked, have one non-zero singular value,
    and each increment is W_{i+1} − W_i = η_x W_0 (A_{i+1} − A_i) A(x)ᵀ."""
    config, params, context, query = problem[:4]
    N = context.shape[1]
    path = implicit_path(params, config, context, query)
    updates = [
        implicit_update(params, config, context[:, :i], query)[0].delta_W for i in range(1, N + 1)
    ]
    stacked = numpy.concatenate(updates, axis=1)  # (B, N·M, D)
    sigma = numpy.linalg.svd(stacked, compute_uv=False)
    assert numpy.all(sigma[:, 1:] <= RANK_RTOL * sigma[:, :1])

    # the size of the terms W_0 A_i / ‖A(x)‖ whose differences are the increments
    scale = (
        numpy.linalg.norm(params.blocks[0].mlp.W1)
        * numpy.max(norm(path.A_prefix), axis=-1)
        / norm(path.A_query)
    )
    previous = numpy.zeros_like(updates[0])
    for i in range(N):
        increment = (
            path.step_size[:, None, None] * path.columns[:, i, :, None] * path.A_query[:, None, :]
        )
        assert residual_against(updates[i] - previous, increment, scale) <= IDENTITY_RTOL, i
        previous = updates[i]


@given(problems(config=one_block()))
def test_theorem_increment_norm_formula(problem):
    """‖W_{i+1} − W_i‖_F = ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖."""
    config, params, context, query = problem[:4]
    path = implicit_path(params, config, context, query)
    W0 = params.blocks[0].mlp.W1
    A = path.A_prefix
    formula = norm((A[:, 1:] - A[:, :-1]) @ W0.T) / norm(path.A_query)[:, None]  # (B, N)
    assert relative_residual(path.increment_norms, formula) <= IDENTITY_RTOL
    for i in range(context.shape[1]):
        before, after = path.weights(i) - W0, path.weights(i + 1) - W0
        measured = frobenius(path.weights(i + 1) - path.weights(i))
        scale = frobenius(before) + frobenius(after) + numpy.linalg.norm(W0)  # the terms subtracted
        assert residual_against(measured, formula[:, i], scale) <= IDENTITY_RTOL, i


@given(problems(config=one_block()))
def test_theorem_prefix_cumulative_sums_equal_separate_forward_passes(problem):
    """The prefixes A_0..A_N from one run (cumulative sums of the query row) equal N + 1
    separate runs of the block, for softmax and linear attention, causal or not."""
    config, params, context, query = problem[:4]
    u_fast, h_fast = prefix_states(params.blocks[0], config, context, query, "cumulative")
    u_slow, h_slow = prefix_states(params.blocks[0], config, context, query, "forward")
    assert relative_residual(u_fast, u_slow) <= IDENTITY_RTOL
    assert relative_residual(h_fast, h_slow) <= IDENTITY_RTOL


def test_prefix_states_fall_back_when_the_query_weight_underflows():
    """Softmax scores far apart make the query's own weight underflow to 0 in the whole-
    prompt run; the cumulative form then divides 0 by 0, and "auto" must fall back."""
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=3, d_mlp=4)
    params = random_params(config, 2)
    context, query = random_prompts(config, 2, B=3, N=4, scale=300.0)
    u_auto, _ = prefix_states(params.blocks[0], config, context, query, "auto")
    u_slow, _ = prefix_states(params.blocks[0], config, context, query, "forward")
    with numpy.errstate(invalid="ignore", divide="ignore"):
        u_fast, _ = prefix_states(params.blocks[0], config, context, query, "cumulative")
    assert not numpy.all(numpy.isfinite(u_fast))  # the case really is degenerate for the fast path
    assert relative_residual(u_auto, u_slow) <= IDENTITY_RTOL


# -- the factorised form ----------------------------------------------------------------


@given(problems(config=one_block()))
def test_theorem_factorised_path_reproduces_the_context_output(problem):
    """W_i = W_{i−1}(I + η_i F_i) keeps the output: T_{W_i}(c_{i+1}..c_N, x) = T_{W_0}(C, x)
    for every i, in particular T_{W_N}(x) = T_{W_0}(C, x)."""
    config, params, context, query = problem[:4]
    path = factorised_path(params, config, context, query)
    expected = output_at_query(problem, with_query(context, query))
    for i in range(context.shape[1] + 1):
        patched = output_at_query(problem, with_query(context[:, i:], query), path.patch(i))
        assert relative_residual(expected, patched) <= IDENTITY_RTOL, i


@given(problems(config=one_block()))
def test_theorem_factorised_weights_are_the_product_of_factors(problem):
    """W_i = W_0 (I + η_1 F_1)···(I + η_i F_i) with F_i = ΔA(c_i) A_{>i}ᵀ, η_i = 1/‖A_{>i}‖²
    and A_{>i} the block's MLP input on [c_{i+1}..c_N, x] (separate runs, D × D products)."""
    config, params, context, query = problem[:4]
    path = factorised_path(params, config, context, query)
    B, N, D = context.shape
    A_suffix = numpy.stack(
        [
            block_forward(with_query(context[:, i:], query), params.blocks[0], config)[1].u[:, -1]
            for i in range(N + 1)
        ],
        axis=1,
    )  # (B, N+1, D)  A_{>i}, i = 0..N
    assert relative_residual(path.A_suffix, A_suffix) <= IDENTITY_RTOL
    product = numpy.broadcast_to(numpy.eye(D), (B, D, D))
    for i in range(1, N + 1):
        before, after = A_suffix[:, i - 1], A_suffix[:, i]  # A_{>i−1}, A_{>i}
        eta_i = 1.0 / numpy.sum(after**2, axis=-1)
        F_i = (before - after)[:, :, None] * after[:, None, :]  # ΔA(c_i) A_{>i}ᵀ
        scale = (norm(before) + norm(after)) * norm(after)  # ΔA(c_i) is a difference
        assert residual_against(path.factor(i), F_i, scale) <= IDENTITY_RTOL
        product = product @ (numpy.eye(D) + eta_i[:, None, None] * F_i)
        assert (
            relative_residual(path.weights(i), params.blocks[0].mlp.W1 @ product) <= IDENTITY_RTOL
        )


@given(
    problems(config=generic_one_block(), n_context=st.integers(2, 8), batch=st.just(GENERIC_BATCH))
)
def test_theorem_factorised_endpoint_is_another_solution_not_the_rank1_update(problem):
    """For N ≥ 2, W_N − W_0 solves X A(x) = W_0 ΔA like ΔW(C), its Frobenius norm is no
    smaller (ΔW(C) is the minimum-norm solution), and it differs from ΔW(C)
    (generically: the median gap over the prompts exceeds GENERIC_GAP)."""
    config, params, context, query = problem[:4]
    path = factorised_path(params, config, context, query)
    (update,) = implicit_update(params, config, context, query)
    W0 = params.blocks[0].mlp.W1
    X = path.delta_W(context.shape[1])
    solved = numpy.einsum("bmd,bd->bm", X, update.u_without)
    assert (
        residual_against(solved, update.column, update_scale(W0, update) * norm(update.u_without))
        <= IDENTITY_RTOL
    )
    assert numpy.all(
        frobenius(X) >= frobenius(update.delta_W) - IDENTITY_RTOL * update_scale(W0, update)
    )
    gap = gaps(frobenius(X - update.delta_W), frobenius(update.delta_W))
    assert numpy.median(gap) >= GENERIC_GAP, gap


@given(problems(config=one_block(), n_context=st.just(1)))
def test_theorem_factorised_path_of_one_token_is_the_rank1_update(problem):
    """For N = 1 the factorised form and Theorem 2.2 coincide: W_1 = W_0 + ΔW(C)."""
    config, params, context, query = problem[:4]
    path = factorised_path(params, config, context, query)
    (update,) = implicit_update(params, config, context, query)
    assert (
        relative_residual(path.weights(1), params.blocks[0].mlp.W1 + update.delta_W)
        <= IDENTITY_RTOL
    )
    W0 = params.blocks[0].mlp.W1
    assert (
        residual_against(path.delta_W(1), update.delta_W, update_scale(W0, update)) <= IDENTITY_RTOL
    )


@given(problems(config=one_block()))
def test_theorem_factorised_update_rank_is_at_most_tokens_and_span(problem):
    """rank(W_N − W_0) ≤ min(N, M, dim span{ΔA(c_i)}), the span bounded by min(D, H·K)
    without LayerNorm, min(D − 1, H·K) with it, min(D − 1, H·K + 1) with LayerNorm and
    the attention skip (FactorisedPath's docstring)."""
    config, params, context, query = problem[:4]
    path = factorised_path(params, config, context, query)
    N, D, M = context.shape[1], config.d_token, config.d_mlp
    HK = config.n_heads * config.d_head
    if not config.layer_norm:
        span = min(D, HK)
    else:
        span = min(D - 1, HK + 1 if config.attn_skip else HK)
    bound = min(N, M, span)
    sigma = numpy.linalg.svd(path.delta_W(N), compute_uv=False)
    # rounding in the steps W_{j−1} ΔA(c_j) is relative to W_{j−1}: measure against ‖W_0‖ too
    scale = sigma[:, :1] + numpy.linalg.norm(params.blocks[0].mlp.W1)
    assert numpy.all(sigma[:, bound:] <= RANK_RTOL * scale)


# -- order --------------------------------------------------------------------------------


def permuted(context, seed):
    return context[:, numpy.random.default_rng(seed).permutation(context.shape[1])]


@given(problems(config=one_block()))
def test_theorem_endpoint_is_order_invariant_for_one_block(problem):
    """One block, causal or not: permuting the context leaves A(C, x), the endpoint W_N
    and the with-context output at the query unchanged (the query is last and sees
    every token; there are no positions). Only the query row is claimed: with a causal
    mask the context tokens' own outputs do change."""
    config, params, context, query, _, seed = problem
    N = context.shape[1]
    shuffled = permuted(context, seed)
    path, path_p = (implicit_path(params, config, c, query) for c in (context, shuffled))
    assert relative_residual(path.A_prefix[:, N], path_p.A_prefix[:, N]) <= IDENTITY_RTOL
    assert relative_residual(path.weights(N), path_p.weights(N)) <= IDENTITY_RTOL
    assert (
        relative_residual(
            output_at_query(problem, with_query(context, query)),
            output_at_query(problem, with_query(shuffled, query)),
        )
        <= IDENTITY_RTOL
    )


@given(
    problems(config=generic_one_block(), n_context=st.integers(2, 8), batch=st.just(GENERIC_BATCH))
)
def test_theorem_path_depends_on_token_order(problem):
    """Swapping the first two tokens changes W_1 (and so the path), though not W_N
    (generically: the median gap over the prompts exceeds GENERIC_GAP)."""
    config, params, context, query = problem[:4]
    swapped = numpy.concatenate([context[:, [1, 0]], context[:, 2:]], axis=1)
    path, path_s = (implicit_path(params, config, c, query) for c in (context, swapped))
    delta, delta_s = path.update(1).delta_W, path_s.update(1).delta_W
    gap = gaps(frobenius(delta - delta_s), frobenius(delta))
    assert numpy.median(gap) >= GENERIC_GAP, gap
    N = context.shape[1]  # the end point does not move (one block, no positions)
    end, end_s = path.update(N), path_s.update(N)
    assert residual_against(end.delta_W, end_s.delta_W, update_scale(path.W0, end)) <= IDENTITY_RTOL


@given(problems(config=stacks(causal=st.just(False))))
def test_theorem_stack_patches_are_order_invariant_without_causal_mask(problem):
    """A non-causal stack is permutation-equivariant, so every block's patch at the query
    (its MLP input u_C and its ΔW) is unchanged when the context is permuted."""
    config, params, context, query, _, seed = problem
    updates = implicit_update(params, config, context, query)
    updates_p = implicit_update(params, config, permuted(context, seed), query)
    for l, (update, update_p) in enumerate(zip(updates, updates_p)):
        u_C, u_C_p = update.delta_u + update.u_without, update_p.delta_u + update_p.u_without
        assert relative_residual(u_C, u_C_p) <= IDENTITY_RTOL, l
        scale = update_scale(params.blocks[l].mlp.W1, update)
        assert residual_against(update.delta_W, update_p.delta_W, scale) <= IDENTITY_RTOL, l


@given(
    problems(
        config=configs(
            n_blocks=st.just(2),
            causal=st.just(True),
            mlp_skip=st.just(True),
            d_token=st.integers(3, 6),
            d_head=st.integers(2, 4),
        ),
        n_context=st.integers(2, 8),
        batch=st.just(GENERIC_BATCH),
    )
)
def test_theorem_causal_stack_patches_depend_on_order(problem):
    """With a causal mask the context tokens' outputs of block 1 depend on their order,
    so block 2's context vector δu at the query (hence its patch) changes when the first
    two tokens are swapped (generically: median gap over the prompts > GENERIC_GAP).
    Drawn with an MLP skip (without it, dead ReLUs can make block 1's output the same
    for every token, and then nothing depends on order) and H·K ≥ 2, D ≥ 3 (with one
    attention direction and LayerNorm the MLP input is ±constant up to eps, as in
    strategies.generic_one_block)."""
    config, params, context, query = problem[:4]
    swapped = numpy.concatenate([context[:, [1, 0]], context[:, 2:]], axis=1)
    update = implicit_update(params, config, context, query)[1]
    update_s = implicit_update(params, config, swapped, query)[1]
    gap = gaps(norm(update.delta_u - update_s.delta_u), norm(update.delta_u))
    assert numpy.median(gap) >= GENERIC_GAP, gap


# -- one formula ----------------------------------------------------------------------


def test_every_path_update_is_computed_by_the_one_rank_one_update(monkeypatch):
    """ΔW = (W δ) aᵀ/‖a‖² has one implementation, implicit.rank_one_update: the path's
    W_i − W_0 (δ = A_i − A(x), a = A(x)) and every step of the factorised path
    (W = W_{j−1}, δ = ΔA(c_j), a = A_{>j}) call it, and give exactly what it returns."""
    import minimal_icl.dynamics as dynamics
    from minimal_icl.implicit import rank_one_update

    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=2, d_mlp=4,
                               attn_skip=True)
    params = random_params(config, 6)
    context, query = random_prompts(config, 6, B=2, N=3)
    path = implicit_path(params, config, context, query)
    factorised = factorised_path(params, config, context, query)
    delta_W, _, _ = rank_one_update(path.W0, path.A_prefix[:, 2] - path.A_query, path.A_query)
    assert numpy.array_equal(path.update(2).delta_W, delta_W)
    W_0 = factorised.W0 + numpy.zeros((2, 4, 3))  # one W_0 per prompt, as the steps use
    step, _, _ = rank_one_update(W_0, factorised.delta_A[:, 0], factorised.A_suffix[:, 1])
    assert numpy.array_equal(factorised.delta_W(1), step)

    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return rank_one_update(*args, **kwargs)

    monkeypatch.setattr(dynamics, "rank_one_update", spy)
    path.update(2)
    factorised.delta_W(3)
    assert calls == [(4, 3), (2, 4, 3), (2, 4, 3), (2, 4, 3)]


# -- errors and arguments ---------------------------------------------------------------


@given(problems(config=one_block(attn_skip=False, layer_norm=False)))
def test_theorem_path_with_zero_query_raises_degenerate_query_error(problem):
    """A(x) = W_O W_V 0 = 0 without skip or LayerNorm: η_x = 1/‖A(x)‖² does not exist."""
    config, params, context, query = problem[:4]
    query = query.copy()
    query[-1] = 0.0
    B = context.shape[0]
    for build in (implicit_path, factorised_path):
        with pytest.raises(DegenerateQueryError) as info:
            build(params, config, context, query)
        assert info.value.prompts == (B - 1,) and info.value.block == 0


def test_paths_reject_stacks_and_bad_arguments():
    config = TransformerConfig(d_token=3, n_blocks=2, n_heads=1, d_head=2, d_mlp=4)
    context, query = random_prompts(config, 0, B=2, N=3)
    with pytest.raises(ValueError, match="one contextual block"):
        implicit_path(random_params(config, 0), config, context, query)
    with pytest.raises(ValueError, match="one contextual block"):
        factorised_path(random_params(config, 0), config, context, query)
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=2, d_mlp=4)
    params = random_params(config, 0)
    with pytest.raises(ValueError, match="context contains NaN"):
        implicit_path(params, config, context * numpy.nan, query)
    with pytest.raises(ValueError, match="prefix method"):
        implicit_path(params, config, context, query, method="fast")
    path = implicit_path(params, config, context, query)
    for bad in (4, -1, 1.0):
        with pytest.raises(ValueError, match="index"):
            path.weights(bad)
    with pytest.raises(ValueError, match="index"):
        path.gradient(3)  # steps are 0..N−1
    with pytest.raises(ValueError, match="index"):
        factorised_path(params, config, context, query).factor(0)  # factors are 1..N


# -- backends -------------------------------------------------------------------------


def test_paths_stay_on_the_device(backend):
    """implicit_path and factorised_path on every backend: results on the input's device,
    equal to NumPy's, and the path still reproduces the prefix outputs there."""
    config = TransformerConfig(
        d_token=4,
        n_blocks=1,
        n_heads=2,
        d_head=2,
        d_mlp=3,
        causal=True,
        attn_skip=True,
        mlp_skip=True,
        layer_norm=True,
        activation="gelu",
    )
    params = random_params(config, 4)
    context, query = random_prompts(config, 4, B=2, N=4)
    reference = implicit_path(params, config, context, query)
    reference_f = factorised_path(params, config, context, query)

    params_d = tree_map(backend.asarray, params)
    context_d, query_d = backend.asarray(context), backend.asarray(query)
    where = device(context_d)
    path = implicit_path(params_d, config, context_d, query_d)
    for name, value in zip(path._fields, path):
        assert device(value) == where, name
        assert (
            relative_residual(backend.to_numpy(value), getattr(reference, name)) <= IDENTITY_RTOL
        ), name
    for i in range(3):
        assert device(path.weights(i)) == where and device(path.gradient(i)) == where
        assert device(path.loss(i, path.weights(i))) == where
    xp = backend.xp
    expected, _ = forward(
        params_d, config, xp.concat([context_d[:, :2, :], query_d[:, None, :]], axis=1)
    )
    patched, _ = forward(params_d, config, query_d[:, None, :], patches=path.patch(2))
    assert (
        relative_residual(backend.to_numpy(expected[:, -1, :]), backend.to_numpy(patched[:, -1, :]))
        <= IDENTITY_RTOL
    )

    factorised = factorised_path(params_d, config, context_d, query_d)
    W_N = factorised.weights(4)
    assert device(W_N) == where
    assert relative_residual(backend.to_numpy(W_N), reference_f.weights(4)) <= IDENTITY_RTOL
