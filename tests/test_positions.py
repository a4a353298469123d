"""Every position is a query (Innocenti & Achour 2025): one rank-1 update per position, tested.

One test per statement of minimal_icl.positions, over random models with every switch
(causal or not, skips, LayerNorm, softmax or linear attention, 1–3 blocks; stacks drawn
well conditioned, see strategies.well_conditioned), random prompts and seeds. Exact
identities are checked to IDENTITY_RTOL in float64.
"""

from __future__ import annotations

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs, problems, random_params, residual_against, well_conditioned

import minimal_icl.positions as positions
from minimal_icl import (
    IDENTITY_RTOL,
    DegenerateQueryError,
    ImplicitUpdate,
    TransformerConfig,
    forward,
    implicit_update,
    relative_residual,
)
from minimal_icl.block import block_forward
from minimal_icl.experiments.common import cos_frobenius
from minimal_icl.positions import (
    DegeneratePositionError,
    at_position,
    implicit_update_every_position,
    implicit_update_from_last_token,
    position_alignment,
)

any_model = configs().filter(well_conditioned)


def prompt(problem) -> numpy.ndarray:
    """The problem's tokens [C, x], (B, T, D): every position will play the query."""
    return numpy.concatenate([problem.context, problem.query[:, None, :]], axis=1)


@given(problems(config=any_model, n_context=st.integers(0, 6)))
def test_every_position_is_reproduced_by_its_own_patch_alone(problem):
    """T_W(prompt)_t = T_{W+ΔW_t}(z_t): position t's token alone, patched, gives its output."""
    config, params = problem.config, problem.params
    tokens = prompt(problem)
    full, _ = forward(params, config, tokens)
    updates = implicit_update_every_position(params, config, tokens)
    B, T, D = tokens.shape
    assert updates[0].delta_W.shape == (B, T, config.d_mlp, D)
    for t in range(T):
        patched, _ = forward(params, config, tokens[:, t:t + 1], patches=at_position(updates, t))
        residual = relative_residual(full[:, t, :], patched[:, 0, :])
        assert residual <= IDENTITY_RTOL, f"position {t}: residual {residual:.3e} ({config})"


@given(problems(config=any_model, n_context=st.integers(0, 6)))
def test_every_position_is_reproduced_from_the_last_token_alone(problem):
    """Innocenti & Achour's variant: T_W(prompt)_t = T_{W+ΔW_t}(x) with x the last token,
    ΔW_t = W (u_t − u_x) u_xᵀ/‖u_x‖² and Δb′_t = h_t − h_x in the first block."""
    config, params = problem.config, problem.params
    tokens = prompt(problem)
    full, _ = forward(params, config, tokens)
    updates = implicit_update_from_last_token(params, config, tokens)
    for t in range(tokens.shape[1]):
        patched, _ = forward(params, config, tokens[:, -1:], patches=at_position(updates, t))
        residual = relative_residual(full[:, t, :], patched[:, 0, :])
        assert residual <= IDENTITY_RTOL, f"position {t}: residual {residual:.3e} ({config})"
    # the first block's row is u_x/‖u_x‖² at every position
    rows = updates[0].row
    assert numpy.array_equal(rows, numpy.broadcast_to(rows[:, -1:, :], rows.shape))


@given(problems(config=any_model, n_context=st.integers(0, 6)))
def test_block_by_block_every_position_is_reproduced_from_the_last_input_alone(problem):
    """Innocenti & Achour's per-block statement: block l run on the last position's
    with-context input z_l,T alone, patched with ΔW_l,t (u_x from z_l,T), gives block l's
    output at t."""
    config, params = problem.config, problem.params
    tokens = prompt(problem)
    full, cache = forward(params, config, tokens)
    outputs = cache.inputs[1:] + (full,)  # block l's output at every position
    updates = implicit_update_from_last_token(params, config, tokens, per_block=True)
    for t in range(tokens.shape[1]):
        patches = at_position(updates, t)
        for l in range(config.n_blocks):
            out, _ = block_forward(cache.inputs[l][:, -1:], params.blocks[l], config, patches[l])
            residual = relative_residual(outputs[l][:, t, :], out[:, 0, :])
            assert residual <= IDENTITY_RTOL, f"block {l}, position {t}: {residual:.3e}"


def test_the_variant_patch_is_the_last_positions_patch_at_the_last_position():
    """At t = T − 1 the last token is the position itself: both constructions agree, and
    from the second block on the variant carries the per-position patches."""
    config = TransformerConfig(d_token=4, n_blocks=3, n_heads=2, d_head=3, d_mlp=5,
                               attn_skip=True, mlp_skip=True, layer_norm=True)
    params = random_params(config, 5)
    tokens = numpy.random.default_rng(5).standard_normal((3, 6, 4))
    own = implicit_update_every_position(params, config, tokens)
    variant = implicit_update_from_last_token(params, config, tokens)
    assert relative_residual(own[0].delta_W[:, -1], variant[0].delta_W[:, -1]) <= IDENTITY_RTOL
    for l in (1, 2):
        assert relative_residual(own[l].delta_W, variant[l].delta_W) <= IDENTITY_RTOL


@given(problems(config=any_model, n_context=st.integers(1, 6)))
def test_position_t_patch_is_the_query_patch_of_what_t_attends_to(problem):
    """Position t's patch (δu, the row, ΔW and Δb′ of every block) is implicit_update's
    for the prompt [context of t, z_t]: the prefix before t with a causal mask; all
    other tokens (in order) without one, since attention without positions is
    permutation-equivariant."""
    config, params = problem.config, problem.params
    tokens = prompt(problem)
    updates = implicit_update_every_position(params, config, tokens)
    _, cache = forward(params, config, tokens)  # h_C of every block and position, for scale
    for t in range(tokens.shape[1]):
        context = tokens[:, :t] if config.causal else numpy.delete(tokens, t, axis=1)
        if context.shape[1] == 0:
            continue
        reference = implicit_update(params, config, context, tokens[:, t])
        for l, (mine, theirs) in enumerate(zip(updates, reference)):
            u_C = mine.u_without[:, t] + mine.delta_u[:, t]  # (B, D)
            size = numpy.maximum(abs(u_C).max(-1), abs(mine.u_without[:, t]).max(-1))
            assert residual_against(mine.delta_u[:, t], theirs.delta_u, size) <= IDENTITY_RTOL
            assert relative_residual(mine.row[:, t], theirs.row) <= IDENTITY_RTOL
            scale = size * abs(params.blocks[l].mlp.W1).max() * abs(theirs.row).max(-1)
            assert residual_against(mine.delta_W[:, t], theirs.delta_W, scale) <= IDENTITY_RTOL
            if config.mlp_skip:  # Δb′ = h_C − h_∅: against the size of the two terms
                h_C = cache.blocks[l].h[:, t]
                h_size = numpy.maximum(abs(h_C).max(-1), abs(h_C - mine.delta_b[:, t]).max(-1))
                assert residual_against(mine.delta_b[:, t], theirs.delta_b, h_size) <= IDENTITY_RTOL
            else:  # no output-bias patch without an MLP skip
                assert not numpy.any(mine.delta_b[:, t]) and not numpy.any(theirs.delta_b)


@given(problems(config=configs(causal=st.just(True)).filter(well_conditioned)))
def test_a_causal_models_first_position_has_a_zero_patch(problem):
    """With a causal mask position 0 attends to itself only: its context is empty, the
    with-context and alone states coincide, and its patch is exactly zero."""
    updates = implicit_update_every_position(problem.params, problem.config, prompt(problem))
    for update in updates:
        assert not numpy.any(update.delta_W[:, 0]) and not numpy.any(update.delta_b[:, 0])


def test_all_patches_come_from_one_run_of_the_prompt(monkeypatch):
    """One forward pass of the whole prompt, and per block one pass of its T inputs as
    T one-token prompts: no pass per position."""
    config = TransformerConfig(d_token=3, n_blocks=2, causal=True, attn_skip=True)
    params = random_params(config, 0)
    tokens = numpy.random.default_rng(0).standard_normal((2, 9, 3))
    calls = {"forward": [], "block": []}
    real_forward, real_block = positions.forward, positions.block_forward

    def counting_forward(p, c, x, *args, **kwargs):
        calls["forward"].append(x.shape)
        return real_forward(p, c, x, *args, **kwargs)

    def counting_block(z, *args, **kwargs):
        calls["block"].append(z.shape)
        return real_block(z, *args, **kwargs)

    monkeypatch.setattr(positions, "forward", counting_forward)
    monkeypatch.setattr(positions, "block_forward", counting_block)
    implicit_update_every_position(params, config, tokens)
    assert calls == {"forward": [(2, 9, 3)], "block": [(18, 1, 3), (18, 1, 3)]}


@given(
    problems(config=configs(layer_norm=st.just(False)).filter(well_conditioned),
             n_context=st.integers(1, 6)),
    st.data(),
)
def test_a_zero_token_raises_naming_prompt_position_and_block(problem, data):
    """Without LayerNorm a zero token run alone has u_∅ = 0 in the first block: no update
    exists there, and the error names the prompt, the position and the block."""
    tokens = prompt(problem)
    B, T, _ = tokens.shape
    b, t = data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, T - 1))
    tokens[b, t] = 0.0
    with pytest.raises(DegeneratePositionError) as info:
        implicit_update_every_position(problem.params, problem.config, tokens)
    error = info.value
    assert isinstance(error, DegenerateQueryError)
    assert (error.prompts, error.positions, error.block) == ((b,), (t,), 0)
    assert f"(prompt {b}, position {t})" in str(error) and "block 0" in str(error)
    if t == T - 1:  # the variant divides by the last token's u_x
        with pytest.raises(DegeneratePositionError, match=f"prompt {b}, position {t}"):
            implicit_update_from_last_token(problem.params, problem.config, tokens)


@given(problems(config=any_model, n_context=st.integers(1, 6)))
def test_position_alignment_is_cos_F_of_the_patches(problem):
    """position_alignment[l][b, s, t] = cos_F(ΔW_l,s, ΔW_l,t), by the rank-1 factorisation
    cos(c_s, c_t) cos(r_s, r_t), NaN where a patch is zero."""
    config, params = problem.config, problem.params
    updates = implicit_update_every_position(params, config, prompt(problem))
    for update, cos in zip(updates, position_alignment(updates)):
        B, T = update.delta_W.shape[:2]
        assert cos.shape == (B, T, T)
        zero = ~numpy.any(update.delta_W, axis=(-2, -1))  # (B, T)
        for s in range(T):
            for t in range(T):
                undefined = zero[:, s] | zero[:, t]
                assert numpy.array_equal(numpy.isnan(cos[:, s, t]), undefined)
                if not undefined.all():
                    keep = ~undefined
                    direct = cos_frobenius(update.delta_W[keep, s], update.delta_W[keep, t])
                    # cosines lie in [−1, 1]: an absolute IDENTITY_RTOL is a relative one
                    assert numpy.allclose(cos[keep, s, t], direct, rtol=0, atol=IDENTITY_RTOL)


def test_at_position_refuses_bad_arguments():
    config = TransformerConfig(d_token=3)
    params = random_params(config, 0)
    tokens = numpy.random.default_rng(0).standard_normal((2, 4, 3))
    updates = implicit_update_every_position(params, config, tokens)
    assert all(isinstance(u, ImplicitUpdate) for u in at_position(updates, 3))
    with pytest.raises(ValueError, match=r"0 ≤ t < T = 4, got 4"):
        at_position(updates, 4)
    with pytest.raises(ValueError, match=r"got -1"):
        at_position(updates, -1)
    with pytest.raises(TypeError, match="t must be an int"):
        at_position(updates, True)
    with pytest.raises(TypeError, match="tuple of ImplicitUpdate"):
        at_position(updates[0], 0)
    query_only = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    with pytest.raises(ValueError, match="no position axis"):
        at_position(query_only, 0)
    with pytest.raises(ValueError, match="tokens"):
        implicit_update_every_position(params, config, tokens[..., :2])


def test_every_position_on_each_backend(backend):
    """The construction is array-API code: the identity holds on every backend."""
    config = TransformerConfig(d_token=4, n_blocks=2, n_heads=2, d_head=2, d_mlp=5,
                               causal=True, attn_skip=True, mlp_skip=True, layer_norm=True)
    host = random_params(config, 1)
    from minimal_icl.backend import tree_map

    params = tree_map(backend.asarray, host)
    tokens = backend.asarray(numpy.random.default_rng(1).standard_normal((2, 5, 4)))
    full, _ = forward(params, config, tokens)
    for build, alone in ((implicit_update_every_position, None),
                         (implicit_update_from_last_token, -1)):
        updates = build(params, config, tokens)
        for t in range(5):
            x = tokens[:, t:t + 1, :] if alone is None else tokens[:, -1:, :]
            patched, _ = forward(params, config, x, patches=at_position(updates, t))
            residual = relative_residual(backend.to_numpy(full[:, t, :]),
                                         backend.to_numpy(patched[:, 0, :]))
            assert residual <= IDENTITY_RTOL
    cos = position_alignment(implicit_update_every_position(params, config, tokens))
    assert numpy.all(numpy.isnan(backend.to_numpy(cos[0])[:, 0, :]))
