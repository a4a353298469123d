"""Theorem 2.2 (Dherin et al. 2025, v1): the context is a rank-1 update of W, tested.

One test per statement, over random models with every switch, random prompts, random
removed subsets Y and stacks of blocks (strategies.py). Exact identities are checked to
IDENTITY_RTOL in float64, and once to FLOAT32_RTOL in float32.

Run this file as a script to measure the float32 residual distribution written into
docs/float32.md:  .venv/bin/python tests/test_theorem_implicit_update.py
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import (
    RANK_RTOL,
    Problem,
    cast,
    configs,
    one_block,
    problems,
    random_params,
    random_prompts,
    stacks,
    well_conditioned,
)

import minimal_icl.implicit as implicit
from minimal_icl import (
    FLOAT32_RTOL,
    IDENTITY_RTOL,
    DegenerateQueryError,
    TransformerConfig,
    forward,
    linear_attention_context_vector,
    minimum_norm_solution,
    null_space_perturbation,
    relative_residual,
    remove_tokens,
)
from minimal_icl.backend import device, tree_map


def with_query(context, query):
    return numpy.concatenate([context, query[:, None, :]], axis=1)


def theorem_residual(problem: Problem) -> float:
    """Relative residual of T_W(C, x) = T_{W+ΔW(Y)}(C\\Y, x) at the query.

    Both sides run the model on every position (no ``last_only``), the patched side on
    the prompt without Y with the per-block patches of ``implicit_update``.
    """
    config, params, context, query, removed, _ = problem
    updates = implicit.implicit_update(params, config, context, query, removed=removed)
    full, _ = forward(params, config, with_query(context, query))
    patched, _ = forward(params, config, remove_tokens(context, query, removed), patches=updates)
    return relative_residual(full[:, -1, :], patched[:, -1, :])


def check_context_equals_rank1_weight_update(
    problem: Problem, rtol: float = IDENTITY_RTOL
) -> float:
    """Assert Theorem 2.2 for ``problem``; returns the residual."""
    residual = theorem_residual(problem)
    assert residual <= rtol, (
        f"T_W(C, x) ≠ T_(W+ΔW)(C\\Y, x): relative residual {residual:.3e} > {rtol:.0e}"
        f" for {problem.config} (seed {problem.seed}, removed {problem.removed})"
    )
    return residual


# -- the theorem ----------------------------------------------------------------------


SCALES = st.sampled_from([0.1, 1.0, 10.0])  # token scales: saturating softmax, large LN inputs


@given(problems(config=one_block(), scale=SCALES))
def test_theorem_context_equals_rank1_weight_update(problem):
    """Y = C, one block, every switch, tokens of scale 0.1, 1 and 10: T_W(C, x) = T_{W+ΔW}(x)."""
    check_context_equals_rank1_weight_update(problem)


@given(problems(config=one_block(), subset=True, scale=SCALES))
def test_theorem_removing_any_subset_of_context_equals_rank1_weight_update(problem):
    """Any Y ⊆ C (empty and full included), one block: T_W(C, x) = T_{W+ΔW(Y)}(C\\Y, x)."""
    check_context_equals_rank1_weight_update(problem)


@given(problems(config=stacks()))
def test_theorem_stack_context_equals_per_block_rank1_updates(problem):
    """L = 2..3 blocks: the query alone through the L patched blocks gives the
    with-context output at the query, and the patched query's state agrees after every
    block (the induction of docs/theory.md §3). Well-conditioned stacks only (see
    strategies.well_conditioned; every combination also runs at fixed seeds)."""
    config, params, context, query, _, _ = problem
    check_context_equals_rank1_weight_update(problem)
    updates = implicit.implicit_update(params, config, context, query)
    _, full = forward(params, config, with_query(context, query))
    _, patched = forward(params, config, query[:, None, :], patches=updates)
    for l in range(config.n_blocks):
        assert relative_residual(full.inputs[l][:, -1], patched.inputs[l][:, -1]) <= IDENTITY_RTOL


SWITCHES = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize(
    "attention,activation", list(itertools.product(["softmax", "linear"], ["relu", "gelu"]))
)
@pytest.mark.parametrize("causal,attn_skip,mlp_skip,layer_norm", SWITCHES)
def test_theorem_holds_for_every_switch_combination(
    attention, activation, causal, attn_skip, mlp_skip, layer_norm
):
    """All 64 combinations, each with Y = C, a partial Y (one block) and a 2-block stack."""
    for n_blocks, removed in ((1, None), (1, (0, 2, 3)), (2, None)):
        config = TransformerConfig(
            d_token=4,
            n_blocks=n_blocks,
            n_heads=2,
            d_head=3,
            d_mlp=5,
            attention=attention,
            activation=activation,
            causal=causal,
            attn_skip=attn_skip,
            mlp_skip=mlp_skip,
            layer_norm=layer_norm,
        )
        seed = 17 * n_blocks + len(removed or ())
        context, query = random_prompts(config, seed, B=3, N=5)
        problem = Problem(config, random_params(config, seed), context, query, removed, seed)
        check_context_equals_rank1_weight_update(problem)


# -- the shape of ΔW -------------------------------------------------------------------


@given(problems(config=configs(), subset=False))
def test_theorem_delta_W_is_rank_one(problem):
    """Every block's ΔW = (W δu) ⊗ u_∅/‖u_∅‖² has one non-zero singular value,
    σ_1 = ‖W δu‖/‖u_∅‖, and ΔW u_∅ = W δu (the update maps a onto W δ)."""
    config, params, context, query, _, _ = problem
    for l, update in enumerate(implicit.implicit_update(params, config, context, query)):
        W = params.blocks[l].mlp.W1
        W_delta = update.delta_u @ W.T  # (B, M)
        sigma = numpy.linalg.svd(update.delta_W, compute_uv=False)  # (B, min(M, D))
        expected = numpy.linalg.norm(W_delta, axis=-1) / numpy.linalg.norm(
            update.u_without, axis=-1
        )
        assert relative_residual(sigma[:, 0], expected) <= IDENTITY_RTOL
        assert numpy.all(sigma[:, 1:] <= RANK_RTOL * sigma[:, :1])
        mapped = numpy.einsum("bmd,bd->bm", update.delta_W, update.u_without)
        assert relative_residual(mapped, W_delta) <= IDENTITY_RTOL


@given(problems(config=one_block(), subset=True))
def test_theorem_delta_W_is_the_minimum_norm_solution(problem):
    """ΔW equals the pseudo-inverse solution (W δ) a⁺ of X a = W δ, and the least-norm
    solution that LAPACK's lstsq returns for each prompt."""
    config, params, context, query, removed, _ = problem
    (update,) = implicit.implicit_update(params, config, context, query, removed=removed)
    assert (
        relative_residual(update.delta_W, minimum_norm_solution(update.column, update.u_without))
        <= IDENTITY_RTOL
    )
    for b in range(context.shape[0]):
        # X a = W δ  ⇔  aᵀ Xᵀ = (W δ)ᵀ: an underdetermined system, lstsq gives its least-norm Xᵀ
        X_T = numpy.linalg.lstsq(
            update.u_without[b][None, :], update.column[b][None, :], rcond=None
        )[0]
        assert relative_residual(update.delta_W[b], X_T.T) <= IDENTITY_RTOL


@given(problems(config=one_block(), subset=True))
def test_theorem_null_space_perturbation_keeps_output_and_increases_norm(problem):
    """ΔW + M with M a = 0 gives the same output, and its Frobenius norm is strictly
    larger: ‖ΔW + M‖² = ‖ΔW‖² + ‖M‖² (rows of ΔW ∥ aᵀ, rows of M ⊥ a)."""
    config, params, context, query, removed, seed = problem
    (update,) = implicit.implicit_update(params, config, context, query, removed=removed)
    B, M, D = update.delta_W.shape
    size = numpy.linalg.norm(update.delta_W, axis=(1, 2)) + numpy.linalg.norm(
        params.blocks[0].mlp.W1
    )
    perturbation = numpy.random.default_rng(seed).standard_normal((B, M, D)) * size[:, None, None]
    other = null_space_perturbation(update, perturbation)
    M_perp = other - update.delta_W

    M_a = numpy.linalg.norm(numpy.einsum("bmd,bd->bm", M_perp, update.u_without), axis=-1)
    scale = numpy.linalg.norm(M_perp, axis=(1, 2)) * numpy.linalg.norm(update.u_without, axis=-1)
    assert numpy.all(M_a <= IDENTITY_RTOL * scale)  # M⊥ a = 0 to rounding
    full, _ = forward(params, config, with_query(context, query))
    patches = (update._replace(delta_W=other),)
    patched, _ = forward(params, config, remove_tokens(context, query, removed), patches=patches)
    assert relative_residual(full[:, -1], patched[:, -1]) <= IDENTITY_RTOL

    norm2 = numpy.sum(other**2, axis=(1, 2))
    min_norm2 = numpy.sum(update.delta_W**2, axis=(1, 2))
    assert relative_residual(norm2, min_norm2 + numpy.sum(M_perp**2, axis=(1, 2))) <= IDENTITY_RTOL
    assert numpy.all(norm2 > min_norm2)


# -- closed forms and degenerate cases ---------------------------------------------------


@given(problems(config=one_block(attention="linear", layer_norm=False), subset=True))
def test_theorem_linear_attention_context_vector_closed_form(problem):
    """Linear attention: δA_x(Y) = W_O concat_h[(Σ_{y∈Y} v_y k_yᵀ) q_x / √K] exactly, so
    ΔW = W1 (Σ v kᵀ q_x ...) u_∅ᵀ/‖u_∅‖² (the dual form made exact)."""
    config, params, context, query, removed, _ = problem
    (update,) = implicit.implicit_update(params, config, context, query, removed=removed)
    Y = list(removed)
    closed = linear_attention_context_vector(
        params.blocks[0].attn, config.n_heads, context[:, Y], query
    )
    assert relative_residual(update.delta_u, closed) <= IDENTITY_RTOL


@given(
    problems(config=configs(attn_skip=st.just(False), layer_norm=st.just(False))),
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_theorem_zero_query_without_skip_raises_degenerate_query_error(problem, zero_rows):
    """A zero query with no attention skip and no LayerNorm has A(x) = W_O W_V 0 = 0 in
    the first block: the update is undefined and the error names those prompts."""
    assume(any(zero_rows[: problem.context.shape[0]]))
    config, params, context, query, _, _ = problem
    B = context.shape[0]
    zero = [b for b in range(B) if zero_rows[b]]
    query = query.copy()
    query[zero] = 0.0
    with pytest.raises(DegenerateQueryError) as info:
        implicit.implicit_update(params, config, context, query)
    assert info.value.prompts == tuple(zero) and info.value.block == 0
    assert "block 0" in str(info.value) and str(zero) in str(info.value)


def test_theorem_degenerate_query_error_names_the_block():
    """A later block whose attention output vanishes (W_V = 0, no skip) is named."""
    config = TransformerConfig(d_token=3, n_blocks=3, n_heads=1, d_head=2, d_mlp=4)
    params = random_params(config, 5)
    attn = params.blocks[1].attn._replace(W_V=numpy.zeros_like(params.blocks[1].attn.W_V))
    blocks = list(params.blocks)
    blocks[1] = blocks[1]._replace(attn=attn)
    params = params._replace(blocks=tuple(blocks))
    context, query = random_prompts(config, 5, B=2, N=4)
    with pytest.raises(DegenerateQueryError) as info:
        implicit.implicit_update(params, config, context, query)
    assert info.value.block == 1 and info.value.prompts == (0, 1)
    assert isinstance(info.value, ValueError)


# -- float32 --------------------------------------------------------------------------


@given(problems(config=configs().filter(well_conditioned), dtype=numpy.float32))
def test_theorem_float32_context_equals_rank1_weight_update(problem):
    """The same identity in float32 holds to FLOAT32_RTOL (well-conditioned stacks
    included; docs/float32.md has the measured distribution of every kind)."""
    assert problem.context.dtype == numpy.float32
    check_context_equals_rank1_weight_update(problem, rtol=FLOAT32_RTOL)


FLOAT32_MEASURES = (
    "theorem, float32",  # T_{W+ΔW}(x) vs T_W(C, x), both in float32
    "patched float32 vs float64",  # T_{W+ΔW}(x) in float32 vs T_W(C, x) in float64
    "unpatched float32 vs float64",  # T_W(C, x): float32 vs float64 (plain rounding)
    "theorem, float64",  # the identity in float64, for scale
)


FLOAT32_GROUPS = (
    "1 block",
    "stack",
    "1 block, D = 2 with LN",
    "stack, D = 2 with LN or linear without LN",
)


def float32_group(config: TransformerConfig) -> str:
    """The group of a model in docs/float32.md: well-conditioned single blocks and
    stacks first (strategies.well_conditioned), then the ill-conditioned ones."""
    return FLOAT32_GROUPS[(config.n_blocks > 1) + 2 * (not well_conditioned(config))]


def float32_residuals(n_samples: int, seed: int = 0) -> tuple[dict, numpy.ndarray]:
    """Residuals at the query over random problems drawn like the tests' (Y = C, every
    switch, 1–3 blocks): ({measure: array (n_samples,)}, group label per problem)."""
    rng = numpy.random.default_rng(seed)
    values = {name: [] for name in FLOAT32_MEASURES}
    groups = []
    for k in range(n_samples):
        config = TransformerConfig(
            d_token=int(rng.integers(2, 7)),
            n_blocks=int(rng.integers(1, 4)),
            n_heads=int(rng.integers(1, 4)),
            d_head=int(rng.integers(1, 5)),
            d_mlp=int(rng.integers(1, 7)),
            attention=str(rng.choice(["softmax", "linear"])),
            activation=str(rng.choice(["relu", "gelu"])),
            causal=bool(rng.integers(2)),
            attn_skip=bool(rng.integers(2)),
            mlp_skip=bool(rng.integers(2)),
            layer_norm=bool(rng.integers(2)),
        )
        N, B = int(rng.integers(1, 9)), int(rng.integers(1, 4))
        context, query = random_prompts(config, k, B, N)
        p64 = Problem(config, random_params(config, k), context, query, None, k)
        p32 = cast(p64, numpy.float32)
        full64, _ = forward(p64.params, config, with_query(context, query))
        full32, _ = forward(p32.params, config, with_query(p32.context, p32.query))
        updates = implicit.implicit_update(p32.params, config, p32.context, p32.query)
        patched32, _ = forward(p32.params, config, p32.query[:, None, :], patches=updates)
        measured = (
            relative_residual(patched32[:, -1], full32[:, -1]),
            relative_residual(patched32[:, -1].astype(numpy.float64), full64[:, -1]),
            relative_residual(full32[:, -1].astype(numpy.float64), full64[:, -1]),
            theorem_residual(p64),
        )
        for name, value in zip(FLOAT32_MEASURES, measured):
            values[name].append(value)
        groups.append(float32_group(config))
    return {name: numpy.array(v) for name, v in values.items()}, numpy.array(groups)


def test_theorem_float32_residual_distribution_is_within_tier():
    """The measured float32 distribution (docs/float32.md) stays within FLOAT32_RTOL on
    well-conditioned models."""
    values, groups = float32_residuals(60)
    keep = numpy.isin(groups, FLOAT32_GROUPS[:2])  # well-conditioned models
    assert numpy.max(values["theorem, float32"][keep]) <= FLOAT32_RTOL
    assert numpy.max(values["patched float32 vs float64"][keep]) <= FLOAT32_RTOL
    assert numpy.max(values["theorem, float64"]) <= IDENTITY_RTOL
    # float32 really ran: its rounding (~1e-7) is far above float64's
    assert numpy.median(values["unpatched float32 vs float64"]) > 1e3 * IDENTITY_RTOL


# -- a broken implementation must fail the check ----------------------------------------


def _broken_problem(mlp_skip: bool) -> Problem:
    config = TransformerConfig(
        d_token=4,
        n_blocks=1,
        n_heads=2,
        d_head=3,
        d_mlp=5,
        attn_skip=True,
        mlp_skip=mlp_skip,
        layer_norm=True,
    )
    context, query = random_prompts(config, 3, B=2, N=5)
    return Problem(config, random_params(config, 3), context, query, None, 3)


def test_theorem_check_fails_without_dividing_by_the_squared_norm(monkeypatch):
    """ΔW = W δ aᵀ (no division by ‖a‖²) breaks the identity: the check must raise."""
    problem = _broken_problem(mlp_skip=False)
    check_context_equals_rank1_weight_update(problem)  # the real implementation passes

    def without_division(W, delta_u, u_without, block=0):
        column = delta_u @ W.T
        return column[:, :, None] * u_without[:, None, :], column, u_without

    monkeypatch.setattr(implicit, "rank_one_update", without_division)
    assert theorem_residual(problem) > 1e-3
    with pytest.raises(AssertionError, match="relative residual"):
        check_context_equals_rank1_weight_update(problem)


def test_theorem_check_fails_when_the_bias_update_is_dropped(monkeypatch):
    """With an MLP skip, dropping Δb = h_C − h_∅ breaks the identity: the check must raise."""
    problem = _broken_problem(mlp_skip=True)
    check_context_equals_rank1_weight_update(problem)
    real = implicit.ImplicitUpdate

    def without_bias(delta_W, delta_b, *rest):
        return real(delta_W, numpy.zeros_like(delta_b), *rest)

    monkeypatch.setattr(implicit, "ImplicitUpdate", without_bias)
    with pytest.raises(AssertionError, match="relative residual"):
        check_context_equals_rank1_weight_update(problem)


# -- arguments ------------------------------------------------------------------------


def _small():
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=1, d_head=2, d_mlp=4)
    context, query = random_prompts(config, 0, B=2, N=4)
    return config, random_params(config, 0), context, query


def test_remove_tokens_keeps_the_order_of_the_remaining_tokens():
    _, _, context, query = _small()
    tokens = remove_tokens(context, query, [2, 0])
    assert numpy.array_equal(
        tokens, numpy.concatenate([context[:, [1, 3]], query[:, None]], axis=1)
    )
    assert numpy.array_equal(remove_tokens(context, query), query[:, None])
    assert numpy.array_equal(remove_tokens(context, query, []), with_query(context, query))


@pytest.mark.parametrize(
    "removed,message",
    [
        ([4], "out of range"),
        ([-1], "out of range"),
        ([1, 1], "distinct"),
        ([0.5], "ints"),
        ([True], "ints"),
    ],
)
def test_bad_removed_positions_raise(removed, message):
    config, params, context, query = _small()
    with pytest.raises(ValueError, match=message):
        implicit.implicit_update(params, config, context, query, removed=removed)


def test_bad_prompts_raise_naming_the_argument():
    config, params, context, query = _small()
    with pytest.raises(ValueError, match="context"):
        implicit.implicit_update(params, config, context[0], query)
    with pytest.raises(ValueError, match="query"):
        implicit.implicit_update(params, config, context, query[:, :2])
    with pytest.raises(ValueError, match="one query per prompt"):
        implicit.implicit_update(params, config, context, query[:1])
    bad = context.copy()
    bad[1, 2, 0] = numpy.nan
    with pytest.raises(ValueError, match="context contains NaN"):
        implicit.implicit_update(params, config, bad, query)
    bad = query.copy()
    bad[0, 1] = numpy.inf
    with pytest.raises(ValueError, match="query contains NaN"):
        implicit.implicit_update(params, config, context, bad)


def test_partial_context_in_a_stack_raises():
    config = TransformerConfig(d_token=3, n_blocks=2, n_heads=1, d_head=2, d_mlp=4)
    context, query = random_prompts(config, 0, B=2, N=4)
    params = random_params(config, 0)
    with pytest.raises(ValueError, match="single block only"):
        implicit.implicit_update(params, config, context, query, removed=[1])
    # Y = C given explicitly, and Y = ∅, are exact in a stack
    full = implicit.implicit_update(params, config, context, query)
    explicit = implicit.implicit_update(params, config, context, query, removed=[3, 2, 1, 0])
    assert all(numpy.array_equal(a.delta_W, b.delta_W) for a, b in zip(full, explicit))
    for update in implicit.implicit_update(params, config, context, query, removed=[]):
        # nothing removed: δu = 0 up to the rounding of two runs of the same block
        assert numpy.max(numpy.abs(update.delta_u)) <= IDENTITY_RTOL * numpy.max(
            numpy.abs(update.u_without)
        )


# -- backends -------------------------------------------------------------------------


def test_implicit_update_stays_on_the_device(backend):
    """On every backend (array_api_strict on its second device included) the updates
    live on the input's device, match NumPy, and satisfy the theorem there."""
    config = TransformerConfig(
        d_token=4,
        n_blocks=2,
        n_heads=2,
        d_head=2,
        d_mlp=3,
        attn_skip=True,
        mlp_skip=True,
        layer_norm=True,
        activation="gelu",
    )
    params = random_params(config, 11)
    context, query = random_prompts(config, 11, B=2, N=5)
    reference = implicit.implicit_update(params, config, context, query)

    params_d = tree_map(backend.asarray, params)
    context_d, query_d = backend.asarray(context), backend.asarray(query)
    updates = implicit.implicit_update(params_d, config, context_d, query_d)
    where = device(context_d)
    for update, ref in zip(updates, reference):
        for name, value in zip(update._fields, update):
            assert device(value) == where, name
            assert (
                relative_residual(backend.to_numpy(value), getattr(ref, name)) <= IDENTITY_RTOL
            ), name

    xp = backend.xp
    full, _ = forward(params_d, config, xp.concat([context_d, query_d[:, None, :]], axis=1))
    patched, _ = forward(params_d, config, query_d[:, None, :], patches=updates)
    assert device(patched) == where
    assert (
        relative_residual(backend.to_numpy(full[:, -1, :]), backend.to_numpy(patched[:, -1, :]))
        <= IDENTITY_RTOL
    )

    single = dataclasses.replace(config, n_blocks=1)
    params_1 = tree_map(backend.asarray, random_params(single, 11))
    (one,) = implicit.implicit_update(params_1, single, context_d, query_d, removed=[1, 3])
    assert device(one.delta_W) == where
    assert device(remove_tokens(context_d, query_d, [1, 3])) == where
    assert device(minimum_norm_solution(one.column, one.u_without)) == where
    assert device(null_space_perturbation(one, one.delta_W)) == where
    attn = params_1.blocks[0].attn
    closed = linear_attention_context_vector(attn, single.n_heads, context_d[:, :2, :], query_d)
    reference_closed = linear_attention_context_vector(
        random_params(single, 11).blocks[0].attn, single.n_heads, context[:, :2], query
    )
    assert device(closed) == where
    assert relative_residual(backend.to_numpy(closed), reference_closed) <= IDENTITY_RTOL


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    values, groups = float32_residuals(n, seed)
    print(f"{n} problems, seed {seed}:", {g: int(numpy.sum(groups == g)) for g in FLOAT32_GROUPS})
    print("| measure | models | median | 99% | 99.9% | max |")
    print("|---|---|---|---|---|---|")
    for name in FLOAT32_MEASURES:
        for group in FLOAT32_GROUPS:
            q = numpy.quantile(values[name][groups == group], [0.5, 0.99, 0.999, 1.0])
            print(f"| {name} | {group} | " + " | ".join(f"{v:.1e}" for v in q) + " |")
