"""The recurrent contextual layer (minimal_icl.rnn): its gradients, and the theorems on it.

s_0 = 0, s_t = tanh(W_s s_{t−1} + W_in c_t + b_s), A_t = W_out s_t. Every parameter is
gradient-checked with a random upstream gradient (one step, the whole sequence, the
whole model with every switch), a broken backpropagation through time is shown to fail
the checker, and Theorem 2.2 and Proposition 3.1 are property-tested on recurrent
blocks to IDENTITY_RTOL (docs/theory.md §8: neither uses attention).
"""

from __future__ import annotations

import dataclasses

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import Problem, random_params, random_prompts

import minimal_icl.rnn
from minimal_icl import (
    GRADCHECK_RTOL,
    IDENTITY_RTOL,
    AttentionParams,
    TransformerConfig,
    backward,
    forward,
    implicit_path,
    implicit_update,
    init_params,
    load_checkpoint,
    relative_residual,
    remove_tokens,
    save_checkpoint,
    train_setup,
)
from minimal_icl.dynamics import prefix_states
from minimal_icl.gradcheck import (
    assert_gradients_ok,
    check_gradients,
    check_layer,
    random_like,
)
from minimal_icl.params import RNNParams
from minimal_icl.rnn import (
    rnn_backward,
    rnn_forward,
    rnn_query_after_prefixes,
    rnn_step_backward,
    rnn_step_forward,
)
from minimal_icl.train import OptimizerSettings, TrainingSetup

# Outputs that must differ (the same tokens in another order) differ by more than
# DIFFERS_RTOL relative to the outputs (measured 0.70), orders above IDENTITY_RTOL.
DIFFERS_RTOL = 1e-3
# A broken backpropagation through time is wrong by far more than finite differences can
# err: the gradients it breaks have relative errors above BROKEN_ERROR (measured 0.58 at
# least in the two tests below; a correct backward: 3e-11 at most).
BROKEN_ERROR = 1e-3
# A generic block reaches the rank bound: the smallest singular value kept is above
# RANK_GAP times the largest (measured 3.1e-7 at least), the dropped ones are rounding
# (measured 1.6e-16 of the largest, below IDENTITY_RTOL).
RANK_GAP = 1e-9
# The recurrent increments late in the context keep more than KEEPS_SIZE of their early
# size (measured 1.09); a decay like 1/i would leave about 0.05 of it.
KEEPS_SIZE = 0.3


def rnn_params(D: int, S: int, seed: int) -> RNNParams:
    """Random recurrent weights with a non-zero bias."""
    rng = numpy.random.default_rng(seed)
    return RNNParams(
        W_in=rng.standard_normal((S, D)) / numpy.sqrt(D),
        W_s=rng.standard_normal((S, S)) / numpy.sqrt(S),
        b=0.5 * rng.standard_normal(S),
        W_out=rng.standard_normal((D, S)) / numpy.sqrt(S),
    )


# -- the layer -------------------------------------------------------------------------


def test_rnn_forward_is_the_recurrence_written_out():
    """A_t = W_out s_t with s_t = tanh(W_s s_{t−1} + W_in c_t + b_s), s_0 = 0, by a loop over
    one prompt and one token at a time (an independent formula)."""
    D, S, T = 3, 5, 6
    p = rnn_params(D, S, 0)
    x = numpy.random.default_rng(1).standard_normal((2, T, D))
    out, cache = rnn_forward(x, p)
    for b in range(2):
        s = numpy.zeros(S)
        for t in range(T):
            s = numpy.tanh(p.W_s @ s + p.W_in @ x[b, t] + p.b)
            # the same arithmetic in another order: rounding of a few units of 1e-16
            assert relative_residual(out[b, t], p.W_out @ s) <= IDENTITY_RTOL
            assert relative_residual(cache.states[b, t], s) <= IDENTITY_RTOL
    last, _ = rnn_forward(x, p, last_only=True)
    assert last.shape == (2, 1, D) and numpy.array_equal(last[:, 0], out[:, -1])


def test_rnn_token_alone_is_W_out_tanh_W_in_x_plus_b():
    """A(x) = W_out tanh(W_in x + b_s): one token, from s_0 = 0."""
    p = rnn_params(4, 3, 2)
    x = numpy.random.default_rng(3).standard_normal((5, 1, 4))
    out, _ = rnn_forward(x, p)
    expected = numpy.tanh(x[:, 0] @ p.W_in.T + p.b) @ p.W_out.T
    assert relative_residual(out[:, 0], expected) <= IDENTITY_RTOL


def test_rnn_query_after_prefixes_is_a_run_on_each_prefix():
    """A_i = W_out tanh(W_s s_i + W_in x + b_s) equals the layer run on [c_1..c_i, x]."""
    D, S, N = 3, 4, 5
    p = rnn_params(D, S, 4)
    rng = numpy.random.default_rng(5)
    context, query = rng.standard_normal((2, N, D)), rng.standard_normal((2, D))
    _, cache = rnn_forward(context, p)
    states = numpy.concatenate([numpy.zeros((2, 1, S)), cache.states], axis=1)
    A = rnn_query_after_prefixes(states, query, p)
    for i in range(N + 1):
        run, _ = rnn_forward(numpy.concatenate([context[:, :i], query[:, None]], axis=1), p)
        assert relative_residual(A[:, i], run[:, -1]) <= IDENTITY_RTOL, i


def test_rnn_depends_on_the_order_of_the_tokens():
    """Unlike attention without positions, the recurrence reads its tokens in order."""
    p = rnn_params(3, 6, 6)
    x = numpy.random.default_rng(7).standard_normal((1, 4, 3))
    out, _ = rnn_forward(x, p, last_only=True)
    swapped, _ = rnn_forward(x[:, [1, 0, 2, 3]], p, last_only=True)
    assert relative_residual(out, swapped) > DIFFERS_RTOL


# -- gradient checks ---------------------------------------------------------------------


def test_gradcheck_rnn_step():
    """Every input of one step (x, s_prev, W_in, W_s, b) against finite differences."""
    D, S, B = 3, 4, 2
    p = rnn_params(D, S, 8)
    rng = numpy.random.default_rng(9)
    inputs = (rng.standard_normal((B, D)), rng.standard_normal((B, S)), p.W_in, p.W_s, p.b)

    def forward_fn(args):
        x, s_prev, W_in, W_s, b = args
        return rnn_step_forward(x, s_prev, RNNParams(W_in, W_s, b, p.W_out))

    errors = check_layer(forward_fn, rnn_step_backward, inputs, seed=10)
    assert set(errors) == {"0", "1", "2", "3", "4"}
    assert_gradients_ok(errors)


@pytest.mark.parametrize("last_only", [False, True])
def test_gradcheck_rnn_sequence(last_only):
    """Backpropagation through time: dx and every parameter, read out at every position
    or at the last only, random upstream gradient."""
    D, S, B, T = 3, 4, 2, 5
    inputs = (numpy.random.default_rng(11).standard_normal((B, T, D)), rnn_params(D, S, 12))

    def forward_fn(args):
        return rnn_forward(args[0], args[1], last_only)

    errors = check_layer(forward_fn, rnn_backward, inputs, seed=13)
    assert set(errors) == {"0", "1.W_in", "1.W_s", "1.b", "1.W_out"}
    assert_gradients_ok(errors)


RNN_MODELS = [
    dict(n_blocks=1),
    dict(n_blocks=1, attn_skip=True, mlp_skip=True, layer_norm=True, activation="gelu"),
    dict(n_blocks=2, attn_skip=True, layer_norm=True, activation="gelu"),
    dict(n_blocks=2, mlp_skip=True),
]


@pytest.mark.parametrize("switches", RNN_MODELS)
@pytest.mark.parametrize("last_only", [False, True])
def test_gradcheck_model_with_recurrent_blocks(switches, last_only):
    """``backward`` of a model of recurrent blocks: every parameter of every block (and
    the tokens), against finite differences of Σ out ⊙ G with a random G."""
    config = TransformerConfig(d_token=3, d_mlp=5, d_state=4, contextual_layer="rnn", **switches)
    params = random_params(config, seed=14)
    params = params._replace(blocks=tuple(
        blk._replace(attn=blk.attn._replace(b=blk.attn.b + 0.3)) for blk in params.blocks
    ))
    tokens = numpy.random.default_rng(15).standard_normal((2, 4, 3))
    out, cache = forward(params, config, tokens, last_only=last_only)
    G = random_like(out, numpy.random.default_rng(16))
    dtokens, grads = backward(G, cache)

    def loss(tree):
        return float(numpy.sum(forward(tree[1], config, tree[0], last_only=last_only)[0] * G))

    errors = check_gradients(loss, (tokens, params), (dtokens, grads))
    assert any(name.endswith("attn.W_s") for name in errors)
    assert_gradients_ok(errors)


def _broken_step_backward(ds, cache):
    """rnn_step_backward without tanh's derivative 1 − s² (a classic BPTT mistake)."""
    c = cache
    dpre = ds  # wrong: should be ds * (1 − s²)
    return dpre @ c.W_in, dpre @ c.W_s, dpre.T @ c.x, dpre.T @ c.s_prev, dpre.sum(axis=0)


def test_gradcheck_fails_when_bptt_drops_the_tanh_derivative(monkeypatch):
    """A checker that cannot fail proves nothing: drop 1 − s² in the step backward and
    the check rejects every gradient that flows through the tanh, and only those."""
    D, S, B, T = 3, 4, 2, 5
    inputs = (numpy.random.default_rng(17).standard_normal((B, T, D)), rnn_params(D, S, 18))

    def forward_fn(args):
        return rnn_forward(args[0], args[1])

    monkeypatch.setattr(minimal_icl.rnn, "rnn_step_backward", _broken_step_backward)
    errors = check_layer(forward_fn, rnn_backward, inputs, seed=19)
    with pytest.raises(AssertionError, match="gradient check failed") as failure:
        assert_gradients_ok(errors)
    for name in ("0", "1.W_in", "1.W_s", "1.b"):
        assert errors[name] > BROKEN_ERROR and name in str(failure.value)
    assert errors["1.W_out"] <= GRADCHECK_RTOL  # the read-out skips the tanh's backward


def test_gradcheck_fails_when_bptt_forgets_the_future(monkeypatch):
    """Truncating BPTT to one step (ds_prev dropped) fails the check too: dx and every
    parameter but the read-out W_out, whose gradient needs no step back in time."""
    inputs = (numpy.random.default_rng(20).standard_normal((2, 5, 3)), rnn_params(3, 4, 21))
    step = minimal_icl.rnn.rnn_step_backward

    def truncated(ds, cache):
        dx, ds_prev, *rest = step(ds, cache)
        return (dx, 0.0 * ds_prev, *rest)

    monkeypatch.setattr(minimal_icl.rnn, "rnn_step_backward", truncated)
    errors = check_layer(lambda a: rnn_forward(a[0], a[1]), rnn_backward, inputs, seed=22)
    for name in ("0", "1.W_in", "1.W_s", "1.b"):
        assert errors[name] > BROKEN_ERROR, name
    assert errors["1.W_out"] <= GRADCHECK_RTOL
    with pytest.raises(AssertionError, match="W_s"):
        assert_gradients_ok(errors)


# -- Theorem 2.2 and Proposition 3.1 on recurrent blocks -----------------------------------


@st.composite
def rnn_problems(draw, n_blocks=st.integers(1, 3), subset: bool = True):
    """A Problem with a recurrent contextual layer, every switch drawn, non-zero biases."""
    D = draw(st.integers(2, 5))
    layer_norm = draw(st.booleans()) and D > 2  # LN over 2 features: see well_conditioned
    config = TransformerConfig(
        d_token=D, n_blocks=draw(n_blocks), d_mlp=draw(st.integers(1, 6)),
        d_state=draw(st.integers(1, 6)), contextual_layer="rnn",
        activation=draw(st.sampled_from(["relu", "gelu"])), attn_skip=draw(st.booleans()),
        mlp_skip=draw(st.booleans()), layer_norm=layer_norm,
    )
    N, B = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    removed = None
    if subset:
        mask = draw(st.lists(st.booleans(), min_size=N, max_size=N))
        removed = tuple(j for j in range(N) if mask[j])
    params = random_params(config, seed)
    rng = numpy.random.default_rng(seed + 3)
    params = params._replace(blocks=tuple(
        blk._replace(attn=blk.attn._replace(b=0.5 * rng.standard_normal(config.d_state)))
        for blk in params.blocks
    ))
    context, query = random_prompts(config, seed, B, N)
    return Problem(config, params, context, query, removed, seed)


def with_query(context, query):
    return numpy.concatenate([context, query[:, None, :]], axis=1)


@given(rnn_problems())
def test_theorem_rnn_context_equals_rank1_weight_update(problem):
    """Theorem 2.2 on recurrent blocks: T_W(C, x) = T_{W+ΔW(Y)}(C\\Y, x) for any Y ⊆ C,
    one block or a stack (sequential construction), every switch."""
    config, params, context, query, removed, _ = problem
    updates = implicit_update(params, config, context, query, removed=removed)
    full, _ = forward(params, config, with_query(context, query))
    patched, _ = forward(params, config, remove_tokens(context, query, removed), patches=updates)
    assert relative_residual(full[:, -1], patched[:, -1]) <= IDENTITY_RTOL
    for update in updates:  # each ΔW is rank 1: column ⊗ row
        assert numpy.array_equal(update.delta_W, update.column[:, :, None] * update.row[:, None])


@given(rnn_problems(n_blocks=st.just(1), subset=False))
def test_theorem_rnn_path_weights_reproduce_every_prefix_output(problem):
    """Proposition 3.1 on a recurrent block: T_{W_i}(x) = T_{W_0}(c_1..c_i, x) for every i,
    and W_{i+1} = W_i − η_x G_i."""
    config, params, context, query = problem[:4]
    path = implicit_path(params, config, context, query)
    N = context.shape[1]
    for i in range(N + 1):
        expected, _ = forward(params, config, with_query(context[:, :i], query))
        patched, _ = forward(params, config, query[:, None, :], patches=path.patch(i))
        assert relative_residual(expected[:, -1], patched[:, -1]) <= IDENTITY_RTOL, i
    eta = path.step_size[:, None, None]
    for i in range(N):
        stepped = path.weights(i) - eta * path.gradient(i)
        assert relative_residual(path.weights(i + 1), stepped) <= IDENTITY_RTOL, i


@given(rnn_problems(n_blocks=st.just(1), subset=False))
def test_rnn_prefix_states_from_one_run_equal_one_run_per_prefix(problem):
    """The recurrent prefix states (one run, one more step from each s_i) equal N + 1
    separate runs of the block."""
    config, params, context, query = problem[:4]
    u_fast, h_fast = prefix_states(params.blocks[0], config, context, query, "cumulative")
    u_slow, h_slow = prefix_states(params.blocks[0], config, context, query, "forward")
    assert relative_residual(u_fast, u_slow) <= IDENTITY_RTOL
    assert relative_residual(h_fast, h_slow) <= IDENTITY_RTOL


def test_rnn_factorised_path_reproduces_every_suffix():
    """The factorised path runs each suffix in its own order (the recurrence is not
    order-invariant): T_{W_i}(c_{i+1}..c_N, x) = T_{W_0}(C, x) for every i."""
    from minimal_icl import factorised_path

    config = TransformerConfig(d_token=3, d_mlp=6, d_state=5, contextual_layer="rnn")
    params = random_params(config, seed=23)
    context, query = random_prompts(config, 23, 3, 5)
    tokens = with_query(context, query)
    path = factorised_path(params, config, context, query)
    full, _ = forward(params, config, tokens)
    for i in range(6):
        patched, _ = forward(params, config, tokens[:, i:], patches=path.patch(i))
        assert relative_residual(full[:, -1], patched[:, -1]) <= IDENTITY_RTOL, i


@pytest.mark.parametrize("S, rank", [(2, 2), (5, 4)])
def test_rnn_factorised_update_rank_is_bounded_by_the_state_width(S, rank):
    """For the recurrent layer ΔA(c_i) ∈ range(W_out), so rank(W_N − W_0) ≤ min(N, M, D, S)
    (FactorisedPath's docstring): S, not the ignored attention fields n_heads·d_head = 2,
    bounds it, and a generic block reaches the bound (D = 4, N = 6)."""
    from minimal_icl import factorised_path

    config = TransformerConfig(
        d_token=4, n_heads=1, d_head=2, d_mlp=16, d_state=S, contextual_layer="rnn"
    )
    params = random_params(config, seed=25)
    context, query = random_prompts(config, 25, 2, 6)
    path = factorised_path(params, config, context, query)
    sigma = numpy.linalg.svd(path.delta_W(6), compute_uv=False)  # (B, 4)
    assert numpy.all(sigma[:, rank - 1] > RANK_GAP * sigma[:, 0])  # measured ≥ 3.1e-7
    assert numpy.all(sigma[:, rank:] <= IDENTITY_RTOL * sigma[:, :1])  # measured ≤ 1.6e-16


def test_rnn_path_increments_do_not_decay_like_one_over_i():
    """Random recurrent block, N = 200: the increments ‖W_{i+1} − W_i‖ at the end of the
    context are not 1/i-small; they keep the size they had early on (softmax attention's
    decay like 1/i:
    tests/test_experiments.py::test_convergence_softmax_decays_like_one_over_i_even_untrained)."""
    config = TransformerConfig(d_token=3, d_mlp=8, d_state=8, contextual_layer="rnn")
    params = init_params(config, seed=24)
    context, query = random_prompts(config, 24, 16, 200)
    norms = numpy.asarray(implicit_path(params, config, context, query).increment_norms)
    early, late = norms[:, 5:15].mean(), norms[:, 185:].mean()
    assert late > KEEPS_SIZE * early  # measured late ≈ 1.09 early; 1/i: ≈ early / 20


# -- the wiring: config, parameters, checkpoints, training -------------------------------


def test_config_validates_the_contextual_layer_and_state_width():
    with pytest.raises(ValueError, match="contextual_layer must be one of"):
        TransformerConfig(contextual_layer="lstm")
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        TransformerConfig(contextual_layer="rnn", d_state=0)
    config = TransformerConfig(contextual_layer="rnn", d_state=7)
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert TransformerConfig().contextual_layer == "attention"


def test_init_params_builds_the_recurrent_layer():
    config = TransformerConfig(d_token=3, d_state=7, contextual_layer="rnn", n_blocks=2)
    params = init_params(config, seed=0)
    for block in params.blocks:
        assert isinstance(block.attn, RNNParams)
        assert block.attn.W_in.shape == (7, 3) and block.attn.W_s.shape == (7, 7)
        assert block.attn.W_out.shape == (3, 7) and not numpy.any(block.attn.b)


def test_params_of_the_wrong_layer_are_refused():
    rnn = TransformerConfig(d_token=3, contextual_layer="rnn")
    attention = dataclasses.replace(rnn, contextual_layer="attention")
    tokens = numpy.ones((1, 2, 3))
    with pytest.raises(ValueError, match="must be a RNNParams, got AttentionParams"):
        forward(init_params(attention), rnn, tokens)
    with pytest.raises(ValueError, match="must be a AttentionParams, got RNNParams"):
        forward(init_params(rnn), attention, tokens)
    wrong = init_params(dataclasses.replace(rnn, d_state=5))
    with pytest.raises(ValueError, match=r"W_in has shape \(5, 3\), config expects \(16, 3\)"):
        forward(wrong, rnn, tokens)
    assert AttentionParams._fields != RNNParams._fields


def test_checkpoint_round_trip_of_a_recurrent_model(tmp_path):
    config = TransformerConfig(d_token=3, d_state=5, contextual_layer="rnn", layer_norm=True)
    params = init_params(config, seed=3)
    save_checkpoint(tmp_path / "rnn.npz", params, config)
    loaded = load_checkpoint(tmp_path / "rnn.npz")
    assert loaded.config == config
    for a, b in zip(loaded.params.blocks[0].attn, params.blocks[0].attn):
        assert numpy.array_equal(a, b)


def test_train_setup_trains_a_recurrent_model():
    """``train_setup`` with a recurrent config: the held-out loss falls."""
    config = TransformerConfig(d_token=3, d_mlp=16, d_state=8, contextual_layer="rnn")
    setup = TrainingSetup(config=config, optimizer=OptimizerSettings(name="adam", lr=1e-2),
                          steps=60, batch_size=32, n_context=10, d=2, val_every=30,
                          val_size=256)
    history = train_setup(setup, seed=0).history
    assert isinstance(history.val_loss[0], float) and history.val_loss[-1] < history.val_loss[0]


def test_rnn_forward_on_every_backend(backend):
    """The recurrence runs on any array-API namespace and device and agrees with NumPy."""
    config = TransformerConfig(d_token=3, d_state=4, contextual_layer="rnn", layer_norm=True)
    params = init_params(config, seed=5)
    tokens = numpy.random.default_rng(6).standard_normal((2, 4, 3))
    expected, cache = forward(params, config, tokens)
    moved = init_params(config, seed=5, xp=backend.xp, device=backend.device)
    out, cache_b = forward(moved, config, backend.asarray(tokens))
    assert relative_residual(backend.to_numpy(out), expected) <= IDENTITY_RTOL
    dtokens, _ = backward(backend.asarray(numpy.ones_like(tokens)), cache_b)
    reference = backward(numpy.ones_like(tokens), cache)[0]
    assert relative_residual(backend.to_numpy(dtokens), reference) <= IDENTITY_RTOL
