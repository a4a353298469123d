"""The fast model pass (model_fast) and the fast Adam (optim_fast) equal the textbook ones.

``model_fast.forward_fast`` / ``backward_fast`` compute what ``model.forward`` /
``model.backward`` compute by other products (a query row through the heads' QK and OV
circuits, without keys or values, its softmax without a shift; softmax's Jacobian
through P v, row means as products). Equal to rounding, measured three ways, float64,
on every backend fixture:

* Every output on the whole model grid of tests/test_model.py (its 768 unpatched
  configurations: patched passes are the textbook pass's, see ``covers``), at the
  grid's widths and with heads wider than the tokens: ``relative_residual`` ≤
  IDENTITY_RTOL = 1e-12, or, where the pass itself is that sensitive to rounding,
  within ROUNDING_MARGIN times how far the textbook pass moves when every input moves
  by one rounding unit (``rounding_sensitivity``).
* The whole gradient, the token gradient and every parameter gradient as one vector,
  against its largest entry: ≤ IDENTITY_RTOL, with the same fall-back. (Per array, a
  gradient that cancels can differ more: in the rank-collapse corner ∂loss/∂W_K is
  rounding noise in both passes, residuals up to 1.7 of itself. As one vector, on NumPy:
  in 3-block linear stacks with LayerNorm, where one rounding unit on every input moves
  the textbook's own gradient by 1.8e-12 to 2.1e-11 of its largest entry, the fast pass
  stays within 8.2e-13 of it, and within 1.1e-13 elsewhere, measured.)
* Each attention call on its own, against the size of the terms its gradients are
  summed from (``test_attention_fast.term_scales``), entry by entry: ≤ IDENTITY_RTOL on
  every attention call of the grid. This is the measure that does not care about cancellation.

array_api_strict, ten times slower, runs the pairwise covering selection of the grid.

The fall-back is for CuPy (another BLAS, other summation orders), measured on an H200
over the 1536 configurations of both widths: the fast pass's output and gradient
stayed within 1e-12 of the textbook's but in causal linear stacks with LayerNorm, no
attention skip and an MLP skip. There the output of the 2-block stack differed by
1.3e-12 (one rounding unit on the inputs moves it by 1.8e-12) and the gradients of the
3-block stacks by 2.3e-11 and 6.6e-12 (moved by 2.1e-11 and 6.0e-12): at most 1.1 times
the pass's own rounding sensitivity. On NumPy no configuration needs the fall-back, and
CuPy's textbook gradients equal NumPy's to 4.3e-14 on every configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy
import pytest
from backends import Backend
from test_attention_fast import term_scales
from test_model import (
    MODEL_CASES,
    MODEL_SWITCHES,
    make_config,
    on,
    random_params,
    random_patches,
    random_tokens,
)

import minimal_icl.model_fast as model_fast
import minimal_icl.train
from minimal_icl import (
    FLOAT32_RTOL,
    IDENTITY_RTOL,
    TransformerConfig,
    adam_init,
    adam_step,
    backward,
    forward,
    init_params,
    query_loss,
    relative_residual,
    tree_leaves,
    tree_map,
)
from minimal_icl.attention import attention_backward, attention_forward
from minimal_icl.data import regression_prompts
from minimal_icl.model_fast import (
    backward_fast,
    circuits,
    circuits_backward,
    covers,
    forward_fast,
    query_loss_and_grads,
)
from minimal_icl.optim_fast import adam_step_fast
from minimal_icl.params import AttentionParams
from minimal_icl.train import OptimizerSettings, optimizer_init, paper_setting, train_step

WHOLE_GRID = [dict(zip(MODEL_SWITCHES, v)) for v in itertools.product(*MODEL_SWITCHES.values())]
WIDTHS = [("grid-widths", {}), ("wide-heads", {"d_head": 3})]


ROUNDING_MARGIN = 4.0  # the fast pass may differ by this many times the textbook pass's
# own rounding sensitivity (measured on CuPy: at most 1.1 times it where the bound is used)
SENSITIVITY_TRIALS = 8
# The two ill-conditioned configurations below move by 1.8e-12 (output) and 2.1e-11
# (gradients) under one rounding unit (NumPy, measured): above IDENTITY_RTOL, but a bound
# below SENSITIVITY_CEILING, times ROUNDING_MARGIN, still rejects a pass wrong by WRONG_BY.
SENSITIVITY_CEILING = 1e-10
WRONG_BY = 1e-9


def rounding_sensitivity(backend, params, config, tokens, last_only, G) -> tuple[float, float]:
    """How far the textbook output and its gradients (for the upstream gradient G, as one
    vector, ``as_vector``) move, relatively, when every parameter and token is multiplied
    by 1 ± eps (random signs): the worst of SENSITIVITY_TRIALS draws for each. Two correct
    passes that round differently may disagree by about this much."""
    eps = float(numpy.finfo(backend.to_numpy(tokens).dtype).eps)
    rng = numpy.random.default_rng(10)

    def nudged(a):
        return a * backend.asarray(1.0 + eps * rng.choice([-1.0, 1.0], size=tuple(a.shape)))

    out, cache = forward(params, config, tokens, last_only=last_only)
    grads = as_vector(backend, *backward(G, cache, fast=False))
    worst_out = worst_grads = 0.0
    for _ in range(SENSITIVITY_TRIALS):
        moved, cache = forward(tree_map(nudged, params), config, nudged(tokens), last_only=last_only)
        moved_grads = as_vector(backend, *backward(G, cache, fast=False))
        worst_out = max(worst_out, relative_residual(moved, out))
        worst_grads = max(worst_grads, relative_residual(moved_grads, grads))
    return worst_out, worst_grads


def grid_for(backend):
    return MODEL_CASES if backend.name.startswith("array_api_strict") else WHOLE_GRID


def as_vector(backend, dtokens, grads) -> numpy.ndarray:
    """The token gradient and every parameter gradient as one NumPy vector."""
    parts = [backend.to_numpy(dtokens).ravel()]
    parts += [backend.to_numpy(a).ravel() for _, a in tree_leaves(grads)]
    return numpy.concatenate(parts)


def model_inputs(backend, case, overrides):
    config = make_config(case, **overrides)
    params = on(backend, random_params(config, seed=7))
    tokens = backend.asarray(random_tokens(7, config))
    return config, params, tokens


@pytest.mark.parametrize(("width", "overrides"), WIDTHS, ids=[w for w, _ in WIDTHS])
def test_fast_pass_equals_textbook_on_the_model_grid(backend, width, overrides):
    """forward_fast's output and backward_fast's gradients equal forward/backward's on
    every unpatched configuration of the grid, with last_only and without."""
    n_compared = 0
    for case in grid_for(backend):
        if case["patched"]:
            continue
        config, params, tokens = model_inputs(backend, case, overrides)
        out, cache = forward(params, config, tokens, last_only=case["last_only"])
        out_fast, cache_fast = forward_fast(params, config, tokens, last_only=case["last_only"])
        assert tuple(out_fast.shape) == tuple(out.shape)
        G = backend.asarray(numpy.random.default_rng(7).standard_normal(tuple(out.shape)))
        expected = as_vector(backend, *backward(G, cache, fast=False))
        got = as_vector(backend, *backward_fast(G, cache_fast))
        residuals = relative_residual(out_fast, out), relative_residual(got, expected)
        if max(residuals) > IDENTITY_RTOL:  # passes that rounding alone moves this far?
            bounds = rounding_sensitivity(backend, params, config, tokens, case["last_only"], G)
            for residual, bound in zip(residuals, bounds):
                assert residual <= max(IDENTITY_RTOL, ROUNDING_MARGIN * bound), (case, residuals, bounds)
        n_compared += 1
    assert n_compared == len([c for c in grid_for(backend) if not c["patched"]])


# two configurations of the grid whose passes rounding alone moves beyond IDENTITY_RTOL:
# causal linear attention without its skip, LayerNorm, an MLP skip
ILL_CONDITIONED_OUTPUT = {
    "attention": "linear", "activation": "relu", "causal": True, "attn_skip": False,
    "mlp_skip": True, "layer_norm": True, "n_blocks": 2, "last_only": False, "n_heads": 2,
    "patched": False,
}
ILL_CONDITIONED_GRADIENT = {**ILL_CONDITIONED_OUTPUT, "n_blocks": 3, "last_only": True}


@pytest.mark.parametrize(("case", "which"), [(ILL_CONDITIONED_OUTPUT, 0), (ILL_CONDITIONED_GRADIENT, 1)])
def test_rounding_sensitivity_separates_rounding_from_a_wrong_pass(case, which):
    """The fall-back bound of the grid test: the 2-block configuration's output moves by
    about 2e-12 under one rounding unit, the 3-block one's gradients by about 2e-11
    (measured 1.8e-12, 2.1e-11; the grid's fast pass may differ by ROUNDING_MARGIN times
    that), a well-conditioned configuration's by less than IDENTITY_RTOL (measured 5e-15
    at most), and an output or gradient wrong by WRONG_BY of its size is still rejected
    by the bound."""
    numpy_backend = Backend("numpy", numpy)
    assert set(case) == set(MODEL_SWITCHES)
    config, params, tokens = model_inputs(numpy_backend, case, {})
    out, cache = forward(params, config, tokens, last_only=case["last_only"])
    G = numpy.random.default_rng(7).standard_normal(out.shape)
    grads = as_vector(numpy_backend, *backward(G, cache, fast=False))
    bounds = rounding_sensitivity(numpy_backend, params, config, tokens, case["last_only"], G)
    assert IDENTITY_RTOL < bounds[which] < SENSITIVITY_CEILING, bounds
    for right, bound in zip((out, grads), bounds):
        wrong = right * (1.0 + WRONG_BY)
        assert relative_residual(wrong, right) > ROUNDING_MARGIN * bound
    well = {**case, "attention": "softmax", "attn_skip": True}
    config, params, tokens = model_inputs(numpy_backend, well, {})
    bounds = rounding_sensitivity(numpy_backend, params, config, tokens, case["last_only"], G)
    assert max(bounds) < IDENTITY_RTOL, bounds


def test_fast_pass_without_the_token_gradient(backend):
    """input_grad=False returns None for the tokens and the same parameter gradients."""
    for case in MODEL_CASES:
        if case["patched"]:
            continue
        config, params, tokens = model_inputs(backend, case, {})
        out, cache = forward_fast(params, config, tokens, last_only=case["last_only"])
        G = backend.asarray(numpy.random.default_rng(8).standard_normal(tuple(out.shape)))
        dtokens, grads = backward_fast(G, cache)
        none, grads_only = backward_fast(G, cache, input_grad=False)
        assert dtokens is not None and none is None
        for (name, a), (_, b) in zip(tree_leaves(grads), tree_leaves(grads_only)):
            assert numpy.array_equal(backend.to_numpy(a), backend.to_numpy(b)), name


@pytest.mark.parametrize(("width", "overrides"), WIDTHS, ids=[w for w, _ in WIDTHS])
def test_fast_attention_equals_textbook_against_the_terms(backend, width, overrides):
    """Every attention call of the grid (each block's input, a random upstream gradient):
    the fast attention's output equals attention_forward's to IDENTITY_RTOL and its input
    and weight gradients equal attention_backward's to IDENTITY_RTOL of the terms they are
    summed from, entry by entry."""
    rng = numpy.random.default_rng(9)
    bad = []
    for case in grid_for(backend):
        if case["patched"]:
            continue
        config, params, tokens = model_inputs(backend, case, overrides)
        _, cache = forward(params, config, tokens, last_only=case["last_only"])
        for l, block_cache in enumerate(cache.blocks):
            u1 = block_cache.attn.k_proj.x  # the attention's input (after LN1)
            query_only = block_cache.attn.last_only
            p = params.blocks[l].attn
            A, textbook = attention_forward(
                u1, p, config.n_heads, config.attention, config.causal, query_only
            )
            run, back = (
                (model_fast._query_attention, model_fast._query_attention_backward)
                if query_only
                else (model_fast._full_attention, model_fast._full_attention_backward)
            )
            A_fast, fast = run(u1, p, config)
            A_fast = model_fast.namespace(A_fast).reshape(A_fast, tuple(A.shape))
            assert relative_residual(A_fast, A) <= IDENTITY_RTOL, case
            dA = backend.asarray(rng.standard_normal(tuple(A.shape)))
            dx, grads = attention_backward(dA, textbook)
            dA_fast = dA[:, 0, :] if query_only else dA
            dx_fast, grads_fast = back(dA_fast, fast, p, config, True)
            scales = term_scales(dA, textbook, backend.to_numpy)
            pairs = {"dx": (dx_fast, dx)} | {
                name: (getattr(grads_fast, name), getattr(grads, name))
                for name in AttentionParams._fields
            }
            for name, (a, b) in pairs.items():
                a, b = backend.to_numpy(a), backend.to_numpy(b)
                assert a.shape == b.shape == scales[name].shape, name
                scale = float(numpy.max(scales[name]))
                r = float(numpy.max(numpy.abs(a - b))) / (scale if scale > 0 else 1.0)
                if not r <= IDENTITY_RTOL:
                    bad.append(f"{case} {overrides} block {l} {name}: {r:.2e}")
    assert not bad, "\n".join(bad)


def test_circuits_are_the_per_head_products():
    """QK_h = W_Q,hᵀ W_K,h/√K and OV_h = W_V,hᵀ W_O,hᵀ (D, D), from per-head slices taken
    one head at a time: a head's score is x_qᵀ QK_h x_t = q_h · k_t and the attention's
    output Σ_h OV_hᵀ ȳ_h = W_O (W_V,h ȳ_h)_h."""
    rng = numpy.random.default_rng(3)
    H, K, D = 3, 2, 4
    p = AttentionParams(*(rng.standard_normal(s) for s in [(H * K, D)] * 3 + [(D, H * K)]))
    QK, OV, _ = circuits(p, H)
    x_q, x_t, y = rng.standard_normal(D), rng.standard_normal(D), rng.standard_normal((H, D))
    out = 0.0
    for h in range(H):
        rows = slice(h * K, (h + 1) * K)
        q, k = p.W_Q[rows] @ x_q / numpy.sqrt(K), p.W_K[rows] @ x_t
        assert abs(x_q @ QK[h] @ x_t - q @ k) <= IDENTITY_RTOL * abs(q) @ abs(k)
        out = out + p.W_O[:, rows] @ (p.W_V[rows] @ y[h])
    assert relative_residual(numpy.einsum("hd,hde->e", y, OV), out) <= IDENTITY_RTOL


def test_circuits_backward_is_the_adjoint_of_circuits():
    """⟨dQK, QK′(W)[V]⟩ + ⟨dOV, OV′(W)[V]⟩ = ⟨circuits_backward(dQK, dOV), V⟩ for random
    directions V: the circuits are bilinear in the weights, so their directional
    derivative is exact, QK′(W)[V] = (QK(W + V) − QK(W − V))/2 up to rounding."""
    rng = numpy.random.default_rng(5)
    H, K, D = 3, 2, 4
    shapes = [(H * K, D)] * 3 + [(D, H * K)]
    p = AttentionParams(*(rng.standard_normal(s) for s in shapes))
    V = AttentionParams(*(rng.standard_normal(s) for s in shapes))
    dQK, dOV = rng.standard_normal((H, D, D)), rng.standard_normal((H, D, D))
    plus = circuits(AttentionParams(*(a + b for a, b in zip(p, V))), H)
    minus = circuits(AttentionParams(*(a - b for a, b in zip(p, V))), H)
    directional = (numpy.sum(dQK * (plus[0] - minus[0])) + numpy.sum(dOV * (plus[1] - minus[1]))) / 2
    grads = circuits_backward(dQK, dOV, circuits(p, H)[2])
    adjoint = sum(numpy.sum(g * v) for g, v in zip(grads, V))
    scale = sum(numpy.sum(abs(g) * abs(v)) for g, v in zip(grads, V))
    assert abs(directional - adjoint) <= IDENTITY_RTOL * scale
    wrong = grads._replace(W_V=grads.W_V * 1.001)  # the check can fail
    assert abs(directional - sum(numpy.sum(g * v) for g, v in zip(wrong, V))) > IDENTITY_RTOL * scale


def test_column_sums():
    """column_sums(a) = Σ_r a[r, :], against NumPy's sum."""
    a = numpy.random.default_rng(4).standard_normal((7, 5))
    assert relative_residual(model_fast.column_sums(a), a.sum(axis=0)) <= IDENTITY_RTOL


def test_query_loss_and_grads_equals_the_textbook_step(backend):
    """The training step's loss and gradients: fast pass against forward(last_only) +
    query_loss + backward, on the pairwise selection of the grid."""
    for case in MODEL_CASES:
        config, params, tokens = model_inputs(backend, case, {})
        target = backend.asarray(numpy.random.default_rng(4).standard_normal(tokens.shape[0]))
        out, cache = forward(params, config, tokens, last_only=True)
        loss, dout = query_loss(out, target)
        _, grads = backward(dout, cache, fast=False)
        loss_fast, grads_fast = query_loss_and_grads(params, config, tokens, target)
        assert relative_residual(loss_fast, loss) <= IDENTITY_RTOL
        expected = numpy.concatenate([backend.to_numpy(a).ravel() for _, a in tree_leaves(grads)])
        got = numpy.concatenate([backend.to_numpy(a).ravel() for _, a in tree_leaves(grads_fast)])
        assert relative_residual(got, expected) <= IDENTITY_RTOL, case


def test_covers_and_falls_back(monkeypatch):
    """Patched passes and a contextual layer other than attention are not covered: the
    training step's gradients then come from the textbook pass."""
    config = paper_setting().config
    assert covers(config)
    patches = random_patches(config, seed=1)
    assert not covers(config, patches)
    assert covers(config, (None,) * config.n_blocks)
    fields = TransformerConfig.__dataclass_fields__
    if "contextual_layer" in fields:  # the recurrent layer, where the package has it
        rnn = dataclasses.replace(config, contextual_layer="rnn")
        assert not covers(rnn)
        with pytest.raises(ValueError, match="not covered"):
            forward_fast(init_params(rnn), rnn, numpy.zeros((2, 3, config.d_token)))

    calls = []
    monkeypatch.setattr(model_fast, "covers", lambda *args: calls.append(args) or False)
    params = init_params(config, seed=0)
    tokens = numpy.random.default_rng(0).standard_normal((4, 5, config.d_token))
    target = numpy.zeros(4)
    loss, grads = query_loss_and_grads(params, config, tokens, target)
    out, cache = forward(params, config, tokens, last_only=True)
    expected_loss, dout = query_loss(out, target)
    _, expected = backward(dout, cache, fast=True)  # the fallback's attention backward
    assert calls and float(loss) == float(expected_loss)
    for (name, a), (_, b) in zip(tree_leaves(grads), tree_leaves(expected)):
        assert numpy.array_equal(a, b), name


def test_forward_fast_checks_its_arguments():
    config = paper_setting().config
    params = init_params(config)
    with pytest.raises(ValueError, match="tokens"):
        forward_fast(params, config, numpy.zeros((2, 3)))
    with pytest.raises(ValueError):
        forward_fast(params, TransformerConfig(d_token=3, n_heads=2), numpy.zeros((2, 3, 3)))


def test_adam_step_fast_is_adam_step_bit_for_bit(backend):
    """Three steps of both from the same state: the same parameters and moments exactly."""
    config = make_config(MODEL_CASES[0])
    params = on(backend, random_params(config, seed=2))
    state = adam_init(params)
    params_fast, state_fast = params, state
    rng = numpy.random.default_rng(5)
    for _ in range(3):
        grads = on(backend, random_params(config, seed=int(rng.integers(100))))
        params, state = adam_step(params, grads, state, 1e-2, 0.8, 0.99, 1e-6)
        params_fast, state_fast = adam_step_fast(
            params_fast, grads, state_fast, 1e-2, 0.8, 0.99, 1e-6
        )
        assert state_fast.step == state.step
        for a, b in [(state.m, state_fast.m), (state.v, state_fast.v)]:
            assert numpy.array_equal(backend.to_numpy(a), backend.to_numpy(b))
        for (name, a), (_, b) in zip(tree_leaves(params), tree_leaves(params_fast)):
            assert tuple(a.shape) == tuple(b.shape)
            assert numpy.array_equal(backend.to_numpy(a), backend.to_numpy(b)), name


def test_adam_step_fast_checks_its_arguments():
    config = paper_setting().config
    params = init_params(config)
    state = adam_init(params)
    with pytest.raises(ValueError, match="learning rate"):
        adam_step_fast(params, params, state, -1.0)
    with pytest.raises(ValueError, match="beta1"):
        adam_step_fast(params, params, state, 1e-3, beta1=1.0)
    with pytest.raises(ValueError, match="state"):
        adam_step_fast(params, params, adam_init(init_params(make_config(MODEL_CASES[0]))), 1e-3)


def test_training_runs_the_fast_pass(monkeypatch):
    """train_step's gradients come from backward_fast (no token gradient) and its Adam
    from adam_step_fast; the step equals the textbook step to IDENTITY_RTOL."""
    calls = []

    def spy(dout, cache, input_grad=True):
        calls.append(input_grad)
        return backward_fast(dout, cache, input_grad)

    monkeypatch.setattr(model_fast, "backward_fast", spy)
    setup = paper_setting(fast=True)
    params = init_params(setup.config, seed=0)
    batch = regression_prompts(4, setup.n_context, setup.d, seed=0)
    state = optimizer_init(setup.optimizer, params)
    new, _, loss = train_step(params, state, setup.config, batch, setup.optimizer, 1e-3)
    assert calls == [False]
    assert minimal_icl.train.adam_step_fast is adam_step_fast

    out, cache = forward(params, setup.config, batch.tokens, last_only=True)
    expected_loss, dout = query_loss(out, batch.target)
    _, grads = backward(dout, cache, fast=False)
    expected, _ = adam_step(params, grads, state, 1e-3)
    assert relative_residual(loss, expected_loss) <= IDENTITY_RTOL
    for (name, a), (_, b) in zip(tree_leaves(new), tree_leaves(expected)):
        assert relative_residual(a, b) <= IDENTITY_RTOL, name


def test_training_step_with_sgd_uses_the_fast_gradients():
    setup = paper_setting(fast=True)
    sgd = OptimizerSettings(name="sgd", lr=1e-2, momentum=0.5)
    params = init_params(setup.config, seed=0)
    batch = regression_prompts(4, setup.n_context, setup.d, seed=0)
    state = optimizer_init(sgd, params)
    new, _, _ = train_step(params, state, setup.config, batch, sgd, 1e-2)
    out, cache = forward(params, setup.config, batch.tokens, last_only=True)
    _, dout = query_loss(out, batch.target)
    _, grads = backward(dout, cache, fast=False)
    for (name, p), (_, g), (_, n) in zip(tree_leaves(params), tree_leaves(grads), tree_leaves(new)):
        assert relative_residual(n, p - 1e-2 * g) <= IDENTITY_RTOL, name


def test_fast_pass_with_heads_far_apart():
    """One head's query weights 1e4 times the others': its scores reach thousands while
    the other heads' stay of order 1 (a shift shared by the heads would underflow their
    weights); outputs and gradients still equal the textbook pass's."""
    config = paper_setting().config
    params = init_params(config, seed=3)
    block = params.blocks[0]
    W_Q = numpy.array(block.attn.W_Q)
    W_Q[: config.d_head, :] *= 1e4  # head 0
    params = params._replace(blocks=(block._replace(attn=block.attn._replace(W_Q=W_Q)),))
    tokens = numpy.random.default_rng(3).standard_normal((4, 9, config.d_token))
    out, cache = forward(params, config, tokens, last_only=True)
    out_fast, cache_fast = forward_fast(params, config, tokens, last_only=True)
    assert relative_residual(out_fast, out) <= IDENTITY_RTOL
    G = numpy.random.default_rng(4).standard_normal(tuple(out.shape))
    expected = numpy.concatenate(
        [numpy.ravel(a) for _, a in tree_leaves(backward(G, cache, fast=False)[1])]
    )
    got = numpy.concatenate(
        [numpy.ravel(a) for _, a in tree_leaves(backward_fast(G, cache_fast)[1])]
    )
    assert relative_residual(got, expected) <= IDENTITY_RTOL


def test_adam_step_fast_reads_its_own_parameters_back():
    """Given back the parameters it returned, adam_step_fast reads the vector they are
    views of; given other parameters (a second model in between), it reads those: both
    sequences stay bit for bit adam_step's."""
    config = make_config(MODEL_CASES[0])
    models = [random_params(config, seed=s) for s in (11, 12)]
    fast = list(models)
    states, states_fast = [adam_init(p) for p in models], [adam_init(p) for p in models]
    rng = numpy.random.default_rng(6)
    for _ in range(2):
        for i in (0, 1):
            grads = random_params(config, seed=int(rng.integers(100)))
            models[i], states[i] = adam_step(models[i], grads, states[i], 1e-2)
            fast[i], states_fast[i] = adam_step_fast(fast[i], grads, states_fast[i], 1e-2)
            for (name, a), (_, b) in zip(tree_leaves(models[i]), tree_leaves(fast[i])):
                assert numpy.array_equal(a, b), (i, name)


# -- the query row's softmax: no shift, the exact maximum where ℓ leaves its range


def _query_row(tokens, seed: int, scale: float):
    """r (B, H, D) of a paper-shaped head layout at ``scale`` and [x, 1]ᵀ for ``tokens``."""
    B, T, D = tokens.shape
    H = 8
    r = scale * numpy.random.default_rng(seed).standard_normal((B, H, D))
    r = numpy.asarray(r, dtype=tokens.dtype)
    xT = numpy.concatenate([tokens.transpose(0, 2, 1), numpy.ones((B, 1, T), tokens.dtype)], 1)
    return r, numpy.ascontiguousarray(xT)


def _count_calls(monkeypatch, name: str) -> list:
    """Wrap ``model_fast.<name>`` so that each call appends to the returned list."""
    calls = []
    original = getattr(model_fast, name)

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(model_fast, name, counted)
    return calls


def _spy_on_the_exact_path(monkeypatch) -> list:
    return _count_calls(monkeypatch, "_softmax_average_exact")


@pytest.mark.parametrize(
    "dtype, scale",
    [("float64", 1e-3), ("float64", 1.0), ("float64", 10.0), ("float32", 1e-3), ("float32", 3.0)],
)
@pytest.mark.parametrize("seed", range(3))
def test_unshifted_softmax_equals_the_exact_maximum(monkeypatch, dtype, scale, seed):
    """Softmax without a shift, P = exp(S)/Σ_t exp(S_t), gives the weights P = E/ℓ and the
    averages ȳ of the shift c = max_t S_t, with scores of order 1e-6 to 100 (float64) or
    30 (float32), and takes the exact path for none of these batches."""
    rtol = IDENTITY_RTOL if dtype == "float64" else FLOAT32_RTOL
    calls = _spy_on_the_exact_path(monkeypatch)
    tokens = numpy.random.default_rng(10 + seed).standard_normal((6, 11, 3)).astype(dtype)
    r, xT = _query_row(tokens, seed, scale)
    E, inv_norm, y = model_fast._softmax_average(r, xT)
    assert calls == []
    E0, inv_norm0, y0 = model_fast._softmax_average_exact(r, xT)
    assert len(calls) == 1
    assert relative_residual(E * inv_norm, E0 * inv_norm0) <= rtol
    assert relative_residual(y, y0) <= rtol


def _scores_at(tokens, level: float, head: int = 0):
    """r (B, H, D) whose head ``head`` scores S_t = level + x_t,0 (coordinate 0 of tokens
    whose coordinate 1 is set to 1), the other heads scores of order 1; and [x, 1]ᵀ."""
    tokens = numpy.array(tokens)
    tokens[..., 1] = 1.0
    r, xT = _query_row(tokens, 0, 1.0)
    r[:, head, :] = 0.0
    r[:, head, 0], r[:, head, 1] = 1.0, level
    return r, xT


@pytest.mark.parametrize(
    "dtype, level",
    [("float64", 400.0), ("float64", 1e4), ("float64", -800.0),
     ("float32", 50.0), ("float32", 300.0), ("float32", -110.0)],
)  # fmt: skip
def test_scores_beyond_the_range_take_the_exact_maximum(monkeypatch, dtype, level):
    """Scores so large that ℓ = Σ_t exp(S_t) exceeds √largest (float64: above 354, or
    overflowing at 1e4; float32: above 44) or so negative that ℓ underflows below
    T·smallest_normal: the batch is redone with the exact maximum, silently (no
    RuntimeWarning), and its weights and averages are the exact path's."""
    calls = _spy_on_the_exact_path(monkeypatch)
    tokens = numpy.random.default_rng(5).standard_normal((4, 9, 3)).astype(dtype)
    r, xT = _scores_at(tokens, level)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E, inv_norm, y = model_fast._softmax_average(r, xT)
    assert calls == [1] and numpy.all(numpy.isfinite(inv_norm)) and numpy.all(E <= 1.0)
    E0, inv_norm0, y0 = model_fast._softmax_average_exact(r, xT)
    assert numpy.array_equal(y, y0) and numpy.array_equal(E * inv_norm, E0 * inv_norm0)


@pytest.mark.parametrize("dtype, big", [("float64", 1e4), ("float32", 300.0)])
def test_a_large_token_takes_the_exact_maximum(monkeypatch, dtype, big):
    """One token with an entry of ``big`` gives scores beyond the exponential's range:
    the batch is redone with the exact maximum, and the forward pass and its gradients
    still equal the textbook pass's."""
    calls = _spy_on_the_exact_path(monkeypatch)
    config = paper_setting().config
    params = init_params(config, seed=1, dtype=dtype)
    tokens = numpy.random.default_rng(5).standard_normal((4, 9, config.d_token)).astype(dtype)
    tokens[0, 3, 1] = big  # a context token of prompt 0
    out, cache = forward(params, config, tokens, last_only=True)
    out_fast, cache_fast = forward_fast(params, config, tokens, last_only=True)
    assert calls == [1]
    rtol = IDENTITY_RTOL if dtype == "float64" else FLOAT32_RTOL
    assert relative_residual(out_fast, out) <= rtol
    G = numpy.random.default_rng(4).standard_normal(tuple(out.shape)).astype(dtype)
    expected = numpy.concatenate(
        [numpy.ravel(a) for _, a in tree_leaves(backward(G, cache, fast=False)[1])]
    )
    got = numpy.concatenate(
        [numpy.ravel(a) for _, a in tree_leaves(backward_fast(G, cache_fast)[1])]
    )
    assert relative_residual(got, expected) <= rtol


def test_a_non_finite_score_takes_the_exact_maximum(monkeypatch):
    """A NaN token fails both comparisons of the check: the exact path runs, its NaN
    reaches the same outputs as the textbook pass's, and the other prompts' outputs equal
    the textbook's."""
    calls = _spy_on_the_exact_path(monkeypatch)
    config = paper_setting().config
    params = init_params(config, seed=1)
    tokens = numpy.random.default_rng(5).standard_normal((4, 9, config.d_token))
    tokens[2, 4, 0] = numpy.nan
    out = forward(params, config, tokens, last_only=True, check_finite=False)[0]
    out_fast = forward_fast(params, config, tokens, last_only=True)[0]
    assert calls == [1]
    assert numpy.array_equal(numpy.isnan(out_fast), numpy.isnan(out))
    finite = ~numpy.isnan(out).any(axis=(1, 2))  # the prompts without the NaN token
    assert finite.sum() == 3
    assert relative_residual(out_fast[finite], out[finite]) <= IDENTITY_RTOL


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_takes_the_unshifted_path(monkeypatch, dtype):
    """The paper setting's smoke-test training (300 steps) never needs the exact maximum:
    its scores stay in range on real batches, so the speed the README measures is that
    of the unshifted softmax (a silent fall-back on every step would pass every equality
    test). The full 20,000 steps were measured the same way: no fall-back either."""
    from minimal_icl.train import train_setup

    calls = _spy_on_the_exact_path(monkeypatch)
    unshifted = _count_calls(monkeypatch, "_softmax_average")
    train_setup(paper_setting(fast=True), seed=0, dtype=getattr(numpy, dtype))
    assert len(unshifted) == 300 and calls == []


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_largest_score_the_range_passes_is_half_ln_largest(monkeypatch, dtype):
    """A single dominant score passes the check up to ½ ln largest (354.9 in float64,
    44.4 in float32; the other scores far below), and takes the exact path just above:
    the bound _softmax_average's docstring gives for every score of a batch it keeps."""
    calls = _spy_on_the_exact_path(monkeypatch)
    half_ln_max = 0.5 * math.log(float(numpy.finfo(dtype).max))
    for level, exact in ((half_ln_max - 0.05, False), (half_ln_max + 0.05, True)):
        x = numpy.array([[level, -30.0, -40.0]], dtype=dtype)  # scores S_t = x_t (D = 1)
        r = numpy.ones((1, 1, 1), dtype=dtype)
        xT = numpy.ascontiguousarray(numpy.stack([x, numpy.ones_like(x)], axis=1))
        E, inv_norm, y = model_fast._softmax_average(r, xT)
        assert (calls == [1]) is exact, (level, calls)
        E0, inv_norm0, y0 = model_fast._softmax_average_exact(r, xT)
        rtol = IDENTITY_RTOL if dtype == "float64" else FLOAT32_RTOL
        assert relative_residual(E * inv_norm, E0 * inv_norm0) <= rtol
        calls.clear()


@pytest.mark.parametrize(
    "dtype, level",
    [("float64", 345.0), ("float64", -700.0), ("float32", 37.0), ("float32", -80.0)],
)
def test_scores_near_the_ends_of_the_range_keep_their_precision(monkeypatch, dtype, level):
    """Scores about ``level`` (just inside the range: ℓ = Σ_t exp(S_t) within
    [T·smallest_normal, √largest]) take the unshifted path, and its weights and averages
    stay within the tier of the dtype of the exact maximum's: each exp(S_t) carries the
    rounding of its own score, as the textbook's does."""
    calls = _spy_on_the_exact_path(monkeypatch)
    tokens = numpy.random.default_rng(2).standard_normal((4, 11, 3)).astype(dtype)
    r, xT = _scores_at(tokens, level)
    E, inv_norm, y = model_fast._softmax_average(r, xT)
    assert calls == []
    E0, inv_norm0, y0 = model_fast._softmax_average_exact(r, xT)
    rtol = IDENTITY_RTOL if dtype == "float64" else FLOAT32_RTOL
    assert relative_residual(E * inv_norm, E0 * inv_norm0) <= rtol
    assert relative_residual(y, y0) <= rtol
