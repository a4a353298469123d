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
    RegressionBatch,
    forward,
    implicit_update,
    one_step_gd_predict,
    prompt_tokens,
    relative_residual,
    von_oswald_attention,
    von_oswald_model,
    von_oswald_predict,
)
from minimal_icl.backend import device


def construction_tokens(x, y, query_x, theta0=None):
    """The construction's tokens: the query's label slot holds ⟨θ_0, x_q⟩ (0 for None)."""
    if theta0 is None:
        return prompt_tokens(x, y, query_x)
    return prompt_tokens(x, y, query_x, query_x @ theta0)


def as_batch(x, y, query_x):
    """A RegressionBatch around (x, y, query_x) (target and w are not read here)."""
    B, d = query_x.shape
    return RegressionBatch(prompt_tokens(x, y, query_x), numpy.zeros(B), numpy.zeros((B, d)))


@st.composite
def regression_tasks(draw, with_theta0=st.booleans()):
    """(context_x (B, N, d), context_y (B, N), query_x (B, d), eta, theta0 or None)."""
    B, n, d = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    eta = draw(st.floats(0.01, 2.0))
    rng = numpy.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((B, n, d))
    w = rng.standard_normal((B, d))
    y = numpy.einsum("bnd,bd->bn", x, w) + 0.1 * rng.standard_normal((B, n))
    query_x = rng.standard_normal((B, d))
    theta0 = rng.standard_normal(d) if draw(with_theta0) else None
    return x, y, query_x, eta, theta0


def explicit_theta1(x, y, eta, theta0):
    """θ_1 = θ_0 − η (1/N) Σ_j (⟨θ_0, x_j⟩ − y_j) x_j per prompt, (B, d), in plain NumPy."""
    n, d = x.shape[1], x.shape[2]
    theta0 = numpy.zeros(d) if theta0 is None else theta0
    residual = x @ theta0 - y  # (B, N)
    return theta0 - eta * numpy.einsum("bn,bnd->bd", residual, x) / n


@given(regression_tasks())
def test_theorem_von_oswald_attention_is_one_gd_step(task):
    """The y-slot read-out after the layer equals ⟨θ_1, x_q⟩ for one explicit GD step on
    L(θ) = (1/2N) Σ (⟨θ, x_j⟩ − y_j)², from θ_0 = 0 and from a random θ_0."""
    x, y, query_x, eta, theta0 = task
    tokens = prompt_tokens(x, y, query_x)  # the layer sets the query's label slot itself
    predicted = von_oswald_predict(tokens, eta, theta0)
    explicit = one_step_gd_predict(as_batch(x, y, query_x), eta, theta0)
    theta1 = explicit_theta1(x, y, eta, theta0)
    independent = numpy.sum(theta1 * query_x, axis=-1)
    # ŷ = ⟨θ_0, x_q⟩ − ⟨θ_0 − θ_1, x_q⟩ can be a small difference of large terms (θ_0 ≠ 0):
    # measure the residual against the size of those two terms, not of ŷ itself.
    start = numpy.zeros_like(query_x) if theta0 is None else theta0 * numpy.ones_like(query_x)
    terms = numpy.abs(numpy.sum(start * query_x, axis=-1)) + numpy.abs(
        numpy.sum((start - theta1) * query_x, axis=-1)
    )  # (B,)
    assert residual_against(predicted, explicit, terms) <= IDENTITY_RTOL
    assert residual_against(explicit, independent, terms) <= IDENTITY_RTOL


@given(regression_tasks(with_theta0=st.just(False)))
def test_theorem_von_oswald_y_slot_holds_minus_the_gd_prediction(task):
    """With θ_0 = 0 and y_q = 0 the layer writes −⟨θ_1, x_q⟩ into the query's y-slot and
    leaves its x-slot unchanged: ŷ = −(y-slot)."""
    x, y, query_x, eta, _ = task
    tokens = prompt_tokens(x, y, query_x)
    config, params = von_oswald_model(x.shape[2], eta, x.shape[1])
    out, _ = forward(params, config, tokens)
    theta1 = explicit_theta1(x, y, eta, None)
    assert relative_residual(out[:, -1, -1], -numpy.sum(theta1 * query_x, axis=-1)) <= IDENTITY_RTOL
    assert numpy.array_equal(out[:, -1, :-1], query_x)


@given(regression_tasks())
def test_theorem_von_oswald_layer_is_the_papers_update_rule(task):
    """The layer computes e_q + W_P Σ_j W_V e_j (W_K e_j)ᵀ W_Q e_q with W_P = (η/N) I, the
    sum over the context (the query's own term vanishes since y_q = ⟨θ_0, x_q⟩)."""
    x, y, query_x, eta, theta0 = task
    n, d = x.shape[1], x.shape[2]
    attn, n_heads = von_oswald_attention(d, eta, n, theta0)
    assert n_heads == 1
    tokens = construction_tokens(x, y, query_x, theta0)
    e, e_q = tokens[:, :-1], tokens[:, -1]
    K = d + 1
    W_P = (eta / n) * numpy.eye(d + 1)
    # W_O = W_P √K: the engine divides the scores by √K
    assert relative_residual(attn.W_O, W_P * math.sqrt(K)) <= IDENTITY_RTOL
    scores = numpy.einsum("bnk,bk->bn", e @ attn.W_K.T, e_q @ attn.W_Q.T)  # (W_K e_j)ᵀ W_Q e_q
    update = numpy.einsum("bn,bnk->bk", scores, e @ attn.W_V.T) @ W_P.T
    config, params = von_oswald_model(d, eta, n, theta0)
    out, _ = forward(params, config, tokens)
    assert relative_residual(out[:, -1], e_q + update) <= IDENTITY_RTOL


@given(regression_tasks())
def test_theorem_von_oswald_context_vector_is_the_gd_step_at_the_query(task):
    """As a contextual block the layer has A(x) = 0, so u_∅ = e_q and the context vector
    is the whole attention output: δu = (0; ⟨θ_0 − θ_1, x_q⟩)."""
    x, y, query_x, eta, theta0 = task
    n, d = x.shape[1], x.shape[2]
    config, params = von_oswald_model(d, eta, n, theta0)
    tokens = construction_tokens(x, y, query_x, theta0)
    (update,) = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    assert (
        relative_residual(update.u_without, tokens[:, -1]) <= IDENTITY_RTOL
    )  # A(x) = 0 to rounding
    start = numpy.zeros(d) if theta0 is None else theta0
    step = start - explicit_theta1(x, y, eta, theta0)  # (B, d)  θ_0 − θ_1
    expected = numpy.concatenate(
        [numpy.zeros_like(query_x), numpy.sum(step * query_x, -1)[:, None]], -1
    )
    # δu = u_C − u_∅ is a difference of O(1) vectors: measure it against their size
    scale = numpy.max(numpy.abs(update.u_without), axis=-1)
    scale = scale + numpy.max(numpy.abs(expected), axis=-1)
    assert residual_against(update.delta_u, expected, scale) <= IDENTITY_RTOL


@given(regression_tasks(with_theta0=st.just(False)))
def test_theorem_von_oswald_implicit_update_is_gd_weights_projected_on_the_query(task):
    """With θ_0 = 0 and the read-out W = (0, …, 0, −1) as the MLP's first weight,
    ΔW = [⟨θ_1, x_q⟩ x_qᵀ/‖x_q‖², 0]: the explicit GD weights projected on the query
    direction, the minimum-norm matrix agreeing with θ_1 at x_q."""
    x, y, query_x, eta, _ = task
    n, d = x.shape[1], x.shape[2]
    config, params = von_oswald_model(d, eta, n)
    read_out = numpy.zeros((1, d + 1))
    read_out[0, d] = -1.0
    block = params.blocks[0]
    params = params._replace(blocks=(block._replace(mlp=block.mlp._replace(W1=read_out)),))
    tokens = prompt_tokens(x, y, query_x)
    (update,) = implicit_update(params, config, tokens[:, :-1], tokens[:, -1])
    theta1 = explicit_theta1(x, y, eta, None)  # (B, d)
    projected = (
        numpy.sum(theta1 * query_x, -1)[:, None] * query_x / numpy.sum(query_x**2, -1)[:, None]
    )
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
    batch = RegressionBatch(prompt_tokens(xd, yd, qd), yd[:, 0], qd)  # target, w not read
    predicted = von_oswald_predict(batch.tokens, 0.5, theta0=[0.1, -0.2, 0.3])
    explicit = one_step_gd_predict(batch, 0.5, theta0=[0.1, -0.2, 0.3])
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
    with pytest.raises(ValueError, match="theta0 must have shape"):
        von_oswald_attention(3, 0.1, 5, theta0=numpy.ones(4))
    with pytest.raises(ValueError, match="theta0 contains NaN"):
        von_oswald_predict(prompt_tokens(x, y, q), 0.1, theta0=[numpy.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match="tokens must have shape"):
        von_oswald_predict(x[:, :1], 0.1)


def test_von_oswald_predict_does_not_read_the_query_label_slot():
    """The query's y-slot is overwritten with ⟨θ_0, x_q⟩ before the layer runs: any value
    there, NaN included, gives the same prediction; NaN anywhere else is refused."""
    rng = numpy.random.default_rng(1)
    x, y, q = (
        rng.standard_normal((3, 4, 2)),
        rng.standard_normal((3, 4)),
        rng.standard_normal((3, 2)),
    )
    tokens = prompt_tokens(x, y, q)
    reference = von_oswald_predict(tokens, 0.3, theta0=[0.5, -1.0])
    for value in (7.0, numpy.nan):
        changed = tokens.copy()
        changed[:, -1, -1] = value
        assert numpy.array_equal(von_oswald_predict(changed, 0.3, theta0=[0.5, -1.0]), reference)
    changed = tokens.copy()
    changed[0, 1, -1] = numpy.nan
    with pytest.raises(ValueError, match="NaN"):
        von_oswald_predict(changed, 0.3)
