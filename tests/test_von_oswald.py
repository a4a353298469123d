"""von Oswald et al. (2023): one linear self-attention layer is one step of GD, tested.

The construction runs through the package's own model (linear attention, attention
skip, a zero MLP with an MLP skip) and is compared with an explicit gradient step.
"""

from __future__ import annotations

import math

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import residual_against

from minimal_icl import (
    IDENTITY_RTOL,
    forward,
    gd_one_step_predict,
    implicit_update,
    relative_residual,
    von_oswald_attention,
    von_oswald_model,
    von_oswald_predict,
)
from minimal_icl.backend import device
from minimal_icl.von_oswald import regression_tokens


@st.composite
def regression_tasks(draw, with_W0=st.booleans()):
    """(context_x (B, n, d), context_y (B, n), query_x (B, d), eta, W0 or None)."""
    B, n, d = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    eta = draw(st.floats(0.01, 2.0))
    rng = numpy.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((B, n, d))
    w = rng.standard_normal((B, d))
    y = numpy.einsum("bnd,bd->bn", x, w) + 0.1 * rng.standard_normal((B, n))
    query_x = rng.standard_normal((B, d))
    W0 = rng.standard_normal(d) if draw(with_W0) else None
    return x, y, query_x, eta, W0


def explicit_W1(x, y, eta, W0):
    """W_1 = W_0 − η (1/n) Σ_i (W_0 x_i − y_i) x_iᵀ per prompt, (B, d), in plain NumPy."""
    n, d = x.shape[1], x.shape[2]
    W0 = numpy.zeros(d) if W0 is None else W0
    residual = x @ W0 - y  # (B, n)
    return W0 - eta * numpy.einsum("bn,bnd->bd", residual, x) / n


@given(regression_tasks())
def test_theorem_von_oswald_attention_is_one_gd_step(task):
    """The y-slot read-out after the layer equals W_1 x_q for one explicit GD step on
    L(W) = (1/2n) Σ (W x_i − y_i)², from W_0 = 0 and from a random W_0."""
    x, y, query_x, eta, W0 = task
    tokens = regression_tokens(x, y, query_x)
    predicted = von_oswald_predict(tokens, eta, W0)
    explicit = gd_one_step_predict(x, y, query_x, eta, W0)
    W1 = explicit_W1(x, y, eta, W0)
    independent = numpy.sum(W1 * query_x, axis=-1)
    # ŷ = W_0 x_q − (W_0 − W_1) x_q can be a small difference of large terms (W_0 ≠ 0):
    # measure the residual against the size of those two terms, not of ŷ itself.
    start = numpy.zeros_like(query_x) if W0 is None else W0 * numpy.ones_like(query_x)
    terms = numpy.abs(numpy.sum(start * query_x, axis=-1)) + numpy.abs(
        numpy.sum((start - W1) * query_x, axis=-1)
    )  # (B,)
    assert residual_against(predicted, explicit, terms) <= IDENTITY_RTOL
    assert residual_against(explicit, independent, terms) <= IDENTITY_RTOL


@given(regression_tasks(with_W0=st.just(False)))
def test_theorem_von_oswald_y_slot_holds_minus_the_gd_prediction(task):
    """With W_0 = 0 and y_q = 0 the layer writes −W_1 x_q into the query's y-slot and
    leaves its x-slot unchanged: ŷ = −(y-slot)."""
    x, y, query_x, eta, _ = task
    tokens = regression_tokens(x, y, query_x)
    config, params = von_oswald_model(x.shape[2], eta, x.shape[1])
    out, _ = forward(params, config, tokens)
    W1 = explicit_W1(x, y, eta, None)
    assert relative_residual(out[:, -1, -1], -numpy.sum(W1 * query_x, axis=-1)) <= IDENTITY_RTOL
    assert numpy.array_equal(out[:, -1, :-1], query_x)


@given(regression_tasks())
def test_theorem_von_oswald_layer_is_the_papers_update_rule(task):
    """The layer computes e_q + P Σ_i W_V e_i (W_K e_i)ᵀ W_Q e_q with P = (η/n) I, the sum
    over the context (the query's own term vanishes since y_q = W_0 x_q)."""
    x, y, query_x, eta, W0 = task
    n, d = x.shape[1], x.shape[2]
    attn, n_heads = von_oswald_attention(d, eta, n, W0)
    assert n_heads == 1
    tokens = regression_tokens(x, y, query_x, W0)
    e, e_q = tokens[:, :-1], tokens[:, -1]
    K = d + 1
    P = (eta / n) * numpy.eye(d + 1)
    # W_O = P √K: the engine divides the scores by √K
    assert relative_residual(attn.W_O, P * math.sqrt(K)) <= IDENTITY_RTOL
    scores = numpy.einsum("bnk,bk->bn", e @ attn.W_K.T, e_q @ attn.W_Q.T)  # (W_K e_i)ᵀ W_Q e_q
    update = numpy.einsum("bn,bnk->bk", scores, e @ attn.W_V.T) @ P.T
    config, params = von_oswald_model(d, eta, n, W0)
    out, _ = forward(params, config, tokens)
    assert relative_residual(out[:, -1], e_q + update) <= IDENTITY_RTOL


@given(regression_tasks())
def test_theorem_von_oswald_context_vector_is_the_gd_step_at_the_query(task):
    """As a contextual block the layer has A(x) = 0, so u_∅ = e_q and the context vector
    is the whole attention output: δu = (0; (W_0 − W_1) x_q)."""
    x, y, query_x, eta, W0 = task
    n, d = x.shape[1], x.shape[2]
    config, params = von_oswald_model(d, eta, n, W0)
    tokens = regression_tokens(x, y, query_x, W0)
    (update,) = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    assert (
        relative_residual(update.u_without, tokens[:, -1]) <= IDENTITY_RTOL
    )  # A(x) = 0 to rounding
    W0_ = numpy.zeros(d) if W0 is None else W0
    step = W0_ - explicit_W1(x, y, eta, W0)  # (B, d)  W_0 − W_1
    expected = numpy.concatenate(
        [numpy.zeros_like(query_x), numpy.sum(step * query_x, -1)[:, None]], -1
    )
    # δu = u_C − u_∅ is a difference of O(1) vectors: measure it against their size
    scale = numpy.max(numpy.abs(update.u_without), axis=-1)
    scale = scale + numpy.max(numpy.abs(expected), axis=-1)
    assert residual_against(update.delta_u, expected, scale) <= IDENTITY_RTOL


@given(regression_tasks(with_W0=st.just(False)))
def test_theorem_von_oswald_implicit_update_is_gd_weights_projected_on_the_query(task):
    """With W_0 = 0 and the read-out W = (0, …, 0, −1) as the MLP's first weight,
    ΔW = [W_1 x_q x_qᵀ/‖x_q‖², 0]: the explicit GD weights projected on the query
    direction, the minimum-norm matrix agreeing with W_1 at x_q."""
    x, y, query_x, eta, _ = task
    n, d = x.shape[1], x.shape[2]
    config, params = von_oswald_model(d, eta, n)
    read_out = numpy.zeros((1, d + 1))
    read_out[0, d] = -1.0
    block = params.blocks[0]
    params = params._replace(blocks=(block._replace(mlp=block.mlp._replace(W1=read_out)),))
    tokens = regression_tokens(x, y, query_x)
    (update,) = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    W1 = explicit_W1(x, y, eta, None)  # (B, d)
    projected = numpy.sum(W1 * query_x, -1)[:, None] * query_x / numpy.sum(query_x**2, -1)[:, None]
    assert relative_residual(update.delta_W[:, 0, :d], projected) <= IDENTITY_RTOL
    assert numpy.all(update.delta_W[:, 0, d] == 0.0)


def test_von_oswald_predict_stays_on_the_device(backend):
    rng = numpy.random.default_rng(0)
    x, y, q = (
        rng.standard_normal((2, 5, 3)),
        rng.standard_normal((2, 5)),
        rng.standard_normal((2, 3)),
    )
    xd, yd, qd = backend.asarray(x), backend.asarray(y), backend.asarray(q)
    tokens = regression_tokens(xd, yd, qd)
    predicted = von_oswald_predict(tokens, 0.5, W0=[0.1, -0.2, 0.3])
    explicit = gd_one_step_predict(xd, yd, qd, 0.5, W0=[0.1, -0.2, 0.3])
    assert device(predicted) == device(xd) and device(explicit) == device(xd)
    assert (
        relative_residual(backend.to_numpy(predicted), backend.to_numpy(explicit)) <= IDENTITY_RTOL
    )


def test_von_oswald_rejects_bad_arguments():
    rng = numpy.random.default_rng(0)
    x, y, q = (
        rng.standard_normal((2, 5, 3)),
        rng.standard_normal((2, 5)),
        rng.standard_normal((2, 3)),
    )
    with pytest.raises(ValueError, match="d must be"):
        von_oswald_attention(0, 0.1, 5)
    with pytest.raises(ValueError, match="n_context"):
        von_oswald_attention(3, 0.1, 0)
    with pytest.raises(ValueError, match="eta"):
        von_oswald_attention(3, float("nan"), 5)
    with pytest.raises(ValueError, match="W0 must have shape"):
        von_oswald_attention(3, 0.1, 5, W0=numpy.ones(4))
    with pytest.raises(ValueError, match="context_y"):
        gd_one_step_predict(x, y[:, :4], q, 0.1)
    with pytest.raises(ValueError, match="query_x"):
        gd_one_step_predict(x, y, q[:, :2], 0.1)
    bad = x.copy()
    bad[0, 0, 0] = numpy.nan
    with pytest.raises(ValueError, match="context_x contains NaN"):
        gd_one_step_predict(bad, y, q, 0.1)
    with pytest.raises(ValueError, match="tokens must have shape"):
        von_oswald_predict(x[:, :1], 0.1)
