"""The query loss (gradient by finite differences) and the optimisers (against their textbook formulas)."""

from __future__ import annotations

import math

import numpy
import pytest

from minimal_icl import TransformerConfig, backward, forward, init_params, tree_leaves, tree_map
from minimal_icl.gradcheck import assert_gradients_ok, check_gradients
from minimal_icl.loss import query_loss
from minimal_icl.optim import (
    AdamState,
    adam_init,
    adam_step,
    flatten,
    sgd_init,
    sgd_step,
    unflatten,
)
from minimal_icl.tolerances import IDENTITY_RTOL, relative_residual

# The query loss against the same mean of squares summed by NumPy: a few roundings of
# eps = 2.2e-16 (measured 1.9e-16).
LOSS_RTOL = 1e-15
# The loss of a last_only run against the full run's: the query row comes from the same
# products (measured equal); the margin allows a BLAS that blocks the products otherwise.
LAST_ONLY_LOSS_RTOL = 1e-14


def test_query_loss_value_and_gradient_by_finite_differences():
    rng = numpy.random.default_rng(0)
    out = rng.standard_normal((5, 4, 3))
    target = rng.standard_normal(5)
    loss, dout = query_loss(out, target)
    assert float(loss) == pytest.approx(
        float(numpy.mean((out[:, -1, -1] - target) ** 2)), rel=LOSS_RTOL
    )
    assert dout.shape == out.shape
    mask = numpy.zeros(out.shape, dtype=bool)
    mask[:, -1, -1] = True
    assert numpy.all(dout[~mask] == 0.0)
    assert_gradients_ok(check_gradients(lambda o: float(query_loss(o, target)[0]), out, dout))


def test_loss_through_the_model_last_only_matches_full_output():
    """The loss reads the query row only: last_only gives the same loss and gradients."""
    config = TransformerConfig(
        d_token=3, n_blocks=2, n_heads=2, d_head=3, d_mlp=5, attn_skip=True, layer_norm=True
    )
    params = init_params(config, seed=1)
    rng = numpy.random.default_rng(1)
    tokens, target = rng.standard_normal((4, 6, 3)), rng.standard_normal(4)
    results = []
    for last_only in (False, True):
        out, cache = forward(params, config, tokens, last_only=last_only)
        loss, dout = query_loss(out, target)
        results.append((float(loss), backward(dout, cache)[1]))
    (loss_full, grads_full), (loss_last, grads_last) = results
    assert loss_last == pytest.approx(loss_full, rel=LAST_ONLY_LOSS_RTOL)
    for (name, a), (_, b) in zip(tree_leaves(grads_full), tree_leaves(grads_last)):
        assert relative_residual(a, b) <= IDENTITY_RTOL, name

    def loss_of(tree):
        return float(query_loss(forward(tree, config, tokens, last_only=True)[0], target)[0])

    assert_gradients_ok(check_gradients(loss_of, params, grads_last))


def test_query_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="target"):
        query_loss(numpy.zeros((3, 2, 2)), numpy.zeros(4))
    with pytest.raises(ValueError, match="out"):
        query_loss(numpy.zeros((3, 2)), numpy.zeros(3))


def _tree(seed):
    config = TransformerConfig(d_token=3, n_heads=1, d_head=2, d_mlp=4)
    params = init_params(config, seed=seed)
    return tree_map(lambda p: p + 0.1, params)  # nonzero biases too


def test_sgd_step_against_formula():
    params, grads = _tree(0), _tree(1)
    new, _ = sgd_step(params, grads, sgd_init(params), lr=0.05)
    for (_, p), (_, g), (_, n) in zip(tree_leaves(params), tree_leaves(grads), tree_leaves(new)):
        assert numpy.array_equal(n, p - 0.05 * g)


def test_sgd_momentum_against_a_loop():
    """v ← μ v + g, θ ← θ − lr v, for three steps."""
    params = _tree(0)
    gradients = [_tree(s) for s in (1, 2, 3)]
    state = sgd_init(params, momentum=0.9)
    current = params
    for g in gradients:
        current, state = sgd_step(current, g, state, lr=0.1, momentum=0.9)
    for name, p in tree_leaves(params):
        v = numpy.zeros_like(p)
        theta = p.copy()
        for g in gradients:
            v = 0.9 * v + dict(tree_leaves(g))[name]
            theta = theta - 0.1 * v
        assert relative_residual(dict(tree_leaves(current))[name], theta) <= IDENTITY_RTOL, name
    with pytest.raises(ValueError, match="momentum"):
        sgd_step(params, gradients[0], sgd_init(params), lr=0.1, momentum=0.5)


def test_adam_against_algorithm_1():
    """Four Adam steps against Kingma & Ba's Algorithm 1 written out with m̂ and v̂."""
    params = _tree(0)
    gradients = [_tree(s) for s in (1, 2, 3, 4)]
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-3  # a large eps, so its placement matters
    state = adam_init(params)
    current = params
    for g in gradients:
        current, state = adam_step(current, g, state, lr, b1, b2, eps)
    assert isinstance(state, AdamState) and state.step == 4
    for name, p in tree_leaves(params):
        m, v, theta = numpy.zeros_like(p), numpy.zeros_like(p), p.copy()
        for t, g in enumerate(gradients, start=1):
            g = dict(tree_leaves(g))[name]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            theta = theta - lr * m_hat / (numpy.sqrt(v_hat) + eps)
        assert relative_residual(dict(tree_leaves(current))[name], theta) <= IDENTITY_RTOL, name
        assert (
            relative_residual(dict(tree_leaves(unflatten(state.m, params)))[name], m)
            <= IDENTITY_RTOL
        )
        assert (
            relative_residual(dict(tree_leaves(unflatten(state.v, params)))[name], v)
            <= IDENTITY_RTOL
        )


def test_first_adam_step_moves_every_weight_by_about_lr():
    """At t = 1, m̂ = g and v̂ = g², so each entry moves by lr·g/(|g| + ε) ≈ lr·sign(g)
    (ε = 1e-8, adam_step's default; measured to 5.5e-14 of the move)."""
    params, grads = _tree(0), _tree(5)
    new, _ = adam_step(params, grads, adam_init(params), lr=1e-3)
    for (_, p), (_, g), (_, n) in zip(tree_leaves(params), tree_leaves(grads), tree_leaves(new)):
        move = 1e-3 * g / (numpy.abs(g) + 1e-8)
        assert numpy.allclose(p - n, move, rtol=IDENTITY_RTOL, atol=0)


def test_optimisers_do_not_modify_their_inputs(backend):
    params = tree_map(backend.asarray, _tree(0))
    grads = tree_map(backend.asarray, _tree(1))
    before = [backend.to_numpy(a).copy() for _, a in tree_leaves(params)]
    state = adam_init(params)
    new, _ = adam_step(params, grads, state, lr=0.1)
    new_sgd, _ = sgd_step(params, grads, sgd_init(params, 0.5), lr=0.1, momentum=0.5)
    after = [backend.to_numpy(a) for _, a in tree_leaves(params)]
    assert all(numpy.array_equal(a, b) for a, b in zip(before, after))
    assert float(backend.xp.max(backend.xp.abs(state.m))) == 0.0
    for (_, a), (_, b) in zip(tree_leaves(new), tree_leaves(new_sgd)):
        if backend.device is not None:
            assert a.device == backend.device and b.device == backend.device
        assert a.dtype == backend.xp.float64


def test_flatten_round_trip():
    params = _tree(3)
    vector = flatten(params)
    assert vector.shape == (sum(a.size for _, a in tree_leaves(params)),)
    back = unflatten(vector, params)
    assert type(back) is type(params)
    for (n1, a), (n2, b) in zip(tree_leaves(params), tree_leaves(back)):
        assert n1 == n2 and numpy.array_equal(a, b)
    with pytest.raises(ValueError, match="entries"):
        unflatten(vector[:-1], params)


@pytest.mark.parametrize("lr", [-1.0, math.nan, math.inf])
def test_bad_learning_rates_raise(lr):
    params = _tree(0)
    with pytest.raises(ValueError, match="learning rate"):
        adam_step(params, params, adam_init(params), lr)
    with pytest.raises(ValueError, match="learning rate"):
        sgd_step(params, params, sgd_init(params), lr)
