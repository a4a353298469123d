"""The gradient checker itself: its pieces are right, and it fails on broken backwards.

A checker that cannot fail proves nothing, so each test below breaks one backward on
purpose (monkeypatching the function where the model looks it up) and shows that
check_gradients + assert_gradients_ok rejects it, naming the parameters it corrupts
and only those.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minimal_icl.attention
import minimal_icl.attention_fast
import minimal_icl.block
import minimal_icl.mlp
from minimal_icl import (
    GRADCHECK_RTOL,
    LayerNormParams,
    ModelParams,
    TransformerConfig,
    backward,
    forward,
    init_params,
    tree_map,
)
from minimal_icl.attention import softmax_backward, softmax_forward
from minimal_icl.backend import device
from minimal_icl.gradcheck import (
    FD_STEP,
    assert_gradients_ok,
    check_gradients,
    check_layer,
    numerical_gradient,
    relative_error,
)
from minimal_icl.layernorm import LayerNormCache
from minimal_icl.linear import linear_backward

EPS64 = float(numpy.finfo(numpy.float64).eps)
# a result computed with a handful of roundings from exact data: within a few units of eps
FEW_ROUNDINGS = 4 * EPS64
# The stencil's own relative error at FD_STEP on smooth functions: truncation h⁴ ≈ 1e-20,
# rounding about eps/h ≈ 1e-11 (measured 5.0e-12 and 1.7e-12 in the two tests below).
STENCIL_RTOL = 1e-10
# The error ratio when the step doubles, 2⁴ for a fourth-order stencil (measured 16.0007),
# and how far from it the measured ratio may lie (the h⁶ term and rounding).
FOURTH_ORDER_RATIO, RATIO_SLACK = 2.0**4, 1.0
# A broken backward is wrong by far more than finite differences can err: the failing
# gradients' relative errors below are at least BROKEN_ERROR (measured: 0.26 at least),
# and the wrong softmax Jacobians' at least WRONG_JACOBIAN_ERROR (measured 0.52 and 0.84).
BROKEN_ERROR = 1e-3
WRONG_JACOBIAN_ERROR = 0.1


# ---------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------


def test_relative_error(backend):
    a = backend.asarray([[3.0, 0.0], [0.0, 4.0]])  # ‖a‖ = 5
    zero = backend.asarray(numpy.zeros((2, 2)))
    assert relative_error(a, a) == 0.0
    assert relative_error(zero, zero) == 0.0  # both exactly zero: no 0/0
    assert relative_error(a, zero) == 1.0 and relative_error(zero, a) == 1.0
    assert relative_error(a, 2.0 * a) == pytest.approx(0.5, rel=FEW_ROUNDINGS)  # ‖a‖ / ‖2a‖
    assert relative_error(1e-30 * a, 2e-30 * a) == pytest.approx(0.5, rel=FEW_ROUNDINGS)


def test_numerical_gradient_matches_calculus(backend):
    """f(x) = Σ c ⊙ sin(x) + (Σ x)², ∂f/∂x = c ⊙ cos(x) + 2 Σ x; on the input's device."""
    rng = numpy.random.default_rng(0)
    x_np, c_np = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    x, c = backend.asarray(x_np), backend.asarray(c_np)
    xp = backend.xp

    def f(v):
        return float(xp.sum(c * xp.sin(v)) + xp.sum(v) ** 2)

    grad = numerical_gradient(f, x)
    assert device(grad) == device(x) and grad.dtype == x.dtype and tuple(grad.shape) == (2, 3)
    exact = c_np * numpy.cos(x_np) + 2.0 * x_np.sum()
    # the stencil's own accuracy at FD_STEP: truncation h⁴ ≈ 1e-20, rounding eps/h ≈ 1e-11
    assert relative_error(backend.to_numpy(grad), exact) <= STENCIL_RTOL


def test_numerical_gradient_is_fourth_order():
    """Doubling the step multiplies the error by 2⁴ = 16 (the h⁴ term of the stencil)."""
    x = numpy.array([0.3])
    exact = math.exp(0.3)

    def error(step):
        return abs(float(numerical_gradient(lambda v: math.exp(float(v[0])), x, step)[0]) - exact)

    ratio = error(2e-2) / error(1e-2)
    assert abs(ratio - FOURTH_ORDER_RATIO) < RATIO_SLACK
    assert error(FD_STEP) <= STENCIL_RTOL * exact  # rounding eps/h ≈ 1e-11 dominates at FD_STEP


class Tree(NamedTuple):
    W: object
    b: object
    skipped: object  # None leaves are not parameters


def test_check_gradients_names_every_leaf_and_needs_every_gradient():
    rng = numpy.random.default_rng(1)
    tree = Tree(W=rng.standard_normal((2, 3)), b=rng.standard_normal(2), skipped=None)
    x = rng.standard_normal(3)

    def loss(t):
        return float(numpy.sum(numpy.tanh(t.W @ x + t.b)))

    dpre = 1.0 - numpy.tanh(tree.W @ x + tree.b) ** 2
    grads = Tree(W=numpy.outer(dpre, x), b=dpre, skipped=None)
    errors = check_gradients(loss, tree, grads)
    assert set(errors) == {"W", "b"}
    assert_gradients_ok(errors)
    with pytest.raises(ValueError, match="no gradient for 'b'"):
        check_gradients(loss, tree, grads._replace(b=None))
    # a plain array is checked under the name "input"
    assert set(check_gradients(lambda v: float(numpy.sum(v**2)), x, 2 * x)) == {"input"}
    with pytest.raises(ValueError, match="no gradient for 'input'"):
        check_gradients(lambda v: float(numpy.sum(v**2)), x, None)


def test_assert_gradients_ok_reports_every_failure():
    assert_gradients_ok({"a": 0.0, "b": GRADCHECK_RTOL})  # at the tolerance: accepted
    with pytest.raises(AssertionError, match=r"rtol 1e-06\): b: 2\.00e-06, c: nan") as info:
        assert_gradients_ok({"a": 1e-9, "c": math.nan, "b": 2e-6})
    assert "a:" not in str(info.value)
    with pytest.raises(AssertionError, match="x: 1.00e-03"):
        assert_gradients_ok({"x": 1e-3}, rtol=1e-4)


def test_check_layer_uses_a_random_upstream_gradient():
    """Different seeds give different upstream gradients G, hence different analytic
    gradients, and each is checked against its own loss Σ out ⊙ G."""
    scores = numpy.random.default_rng(2).standard_normal((2, 4))
    seen = []

    def spy_backward(dout, cache):
        seen.append(dout)
        return softmax_backward(dout, cache)

    for seed in (0, 1):
        assert_gradients_ok(check_layer(softmax_forward, spy_backward, scores, seed=seed))
    assert not numpy.allclose(seen[0], seen[1])
    assert not numpy.allclose(seen[0], numpy.ones_like(seen[0]))


# ---------------------------------------------------------------------------------------
# Broken backwards: the checker must fail, on the right parameters
# ---------------------------------------------------------------------------------------

CONFIG = TransformerConfig(
    d_token=3,
    n_blocks=1,
    n_heads=2,
    d_head=1,
    d_mlp=3,
    attention="softmax",
    activation="gelu",
    attn_skip=True,
    mlp_skip=True,
    layer_norm=True,
)
ATTENTION = {"W_Q", "W_K", "W_V", "W_O"}
MLP = {"W1", "b1", "W2", "b2"}


class Inputs(NamedTuple):
    params: ModelParams
    tokens: object


def model_errors(fast: bool = True) -> dict[str, float]:
    """Gradient-check a 1-block model (random perturbed parameters, random upstream G);
    returns {short name: relative error}, e.g. "W_Q", "ln1.gain", "tokens". ``fast``
    chooses the attention backward: attention_backward_fast, or the textbook one."""
    rng = numpy.random.default_rng(3)
    params = tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), init_params(CONFIG, seed=3))
    tokens = rng.standard_normal((2, 3, 3))
    out, cache = forward(params, CONFIG, tokens)
    G = rng.standard_normal(out.shape)
    dtokens, grads = backward(G, cache, fast=fast)

    def loss(inputs):
        return float(numpy.sum(forward(inputs.params, CONFIG, inputs.tokens)[0] * G))

    errors = check_gradients(loss, Inputs(params, tokens), Inputs(grads, dtokens))
    return {short_name(name): error for name, error in errors.items()}


def short_name(name: str) -> str:
    """params.blocks.0.attn.W_Q -> W_Q, params.blocks.0.ln1.gain -> ln1.gain."""
    if name == "tokens":
        return name
    *_, owner, leaf = name.split(".")
    return f"{owner}.{leaf}" if owner in ("ln1", "ln2") else leaf


def failing(errors: dict[str, float]) -> set[str]:
    return {name for name, error in errors.items() if not error <= GRADCHECK_RTOL}


BACKWARDS = pytest.mark.parametrize("fast", [False, True], ids=["textbook", "fast"])


@BACKWARDS
def test_the_unbroken_model_passes(fast):
    errors = model_errors(fast)
    assert len(errors) == 1 + len(ATTENTION) + len(MLP) + 4
    assert_gradients_ok(errors)


@BACKWARDS
def test_checker_catches_softmax_backward_without_its_sum_term(monkeypatch, fast):
    """dS = P ⊙ dP, dropping the − P ⊙ Σ_j dP_j P_j term. Only gradients that flow
    through the scores break: W_Q, W_K, LN1 and the tokens; W_V, W_O and the MLP do not."""

    def broken(dprobs, cache):
        return cache.probs * dprobs

    module = minimal_icl.attention_fast if fast else minimal_icl.attention
    monkeypatch.setattr(module, "softmax_backward", broken)
    errors = model_errors(fast)
    with pytest.raises(AssertionError, match="W_K.*W_Q"):
        assert_gradients_ok(errors)
    assert failing(errors) == {"W_Q", "W_K", "ln1.gain", "ln1.bias", "tokens"}
    assert min(errors[name] for name in failing(errors)) > BROKEN_ERROR


def test_checker_catches_layernorm_backward_without_its_mean_terms(monkeypatch):
    """dx = rstd ⊙ dx̂, forgetting that μ and σ² depend on x. Everything before a
    LayerNorm breaks; the MLP (after LN2) and the LN gains and biases do not."""

    def broken(dy, cache: LayerNormCache):
        x_hat, rstd, gain = cache
        D = x_hat.shape[-1]
        dgain = numpy.sum(numpy.reshape(dy * x_hat, (-1, D)), axis=0)
        dbias = numpy.sum(numpy.reshape(dy, (-1, D)), axis=0)
        return rstd * (dy * gain), LayerNormParams(gain=dgain, bias=dbias)

    monkeypatch.setattr(minimal_icl.block, "layernorm_backward", broken)
    errors = model_errors()
    with pytest.raises(AssertionError, match="gradient check failed"):
        assert_gradients_ok(errors)
    assert failing(errors) == ATTENTION | {"ln1.gain", "ln1.bias", "tokens"}
    assert min(errors[name] for name in failing(errors)) > BROKEN_ERROR


def test_checker_catches_a_zero_weight_gradient(monkeypatch):
    """linear_backward returning dW = 0 in the MLP: W1 and W2 fail with error exactly 1."""

    def broken(dy, cache):
        dx, dW, db = linear_backward(dy, cache)
        return dx, numpy.zeros_like(dW), db

    monkeypatch.setattr(minimal_icl.mlp, "linear_backward", broken)
    errors = model_errors()
    with pytest.raises(AssertionError, match="W1: 1.00e\\+00.*W2: 1.00e\\+00"):
        assert_gradients_ok(errors)
    assert failing(errors) == {"W1", "W2"}


@BACKWARDS
def test_checker_catches_a_dropped_key_path(monkeypatch, fast):
    """The attention backward without its dk term (the key projection's backward gives
    nothing): W_K fails with error 1, and so do the tokens and the LN1 gain that feed the
    keys. The LN1 bias passes, rightly: it shifts every key by the same W_K b, which
    adds the same amount to all scores of a query, and softmax ignores that. The key
    projection's backward is linear_backward in the textbook attention_backward and
    head_projection_backward in attention_backward_fast."""
    real_forward = minimal_icl.attention.attention_forward
    key_cache = []

    def remember_key_cache(*args, **kwargs):
        out, cache = real_forward(*args, **kwargs)
        key_cache[:] = [cache.k_proj]
        return out, cache

    module = minimal_icl.attention_fast if fast else minimal_icl.attention
    name = "head_projection_backward" if fast else "linear_backward"
    real_backward = getattr(module, name)

    def broken(*args):
        grads = real_backward(*args)
        if args[-1] is key_cache[0]:  # the key projection's cache
            return tuple(None if g is None else numpy.zeros_like(g) for g in grads)
        return grads

    monkeypatch.setattr(minimal_icl.block, "attention_forward", remember_key_cache)
    monkeypatch.setattr(module, name, broken)
    errors = model_errors(fast)
    with pytest.raises(AssertionError, match="W_K: 1.00e\\+00"):
        assert_gradients_ok(errors)
    assert failing(errors) == {"W_K", "ln1.gain", "tokens"}


# ---------------------------------------------------------------------------------------
# Why the upstream gradient is random
# ---------------------------------------------------------------------------------------


def no_leading_factor(dprobs, cache):
    """A wrong softmax backward: dS = dP − Σ_j dP_j P_j, without the leading P ⊙."""
    return dprobs - numpy.sum(dprobs * cache.probs, axis=-1, keepdims=True)


def no_sum_term(dprobs, cache):
    """A wrong softmax backward: dS = P ⊙ dP, without the − P ⊙ Σ_j dP_j P_j term."""
    return cache.probs * dprobs


def test_all_ones_upstream_gradient_is_blind_to_a_wrong_softmax_jacobian():
    """With G = 1 the checked loss Σ softmax(S) is the number of rows, a constant: the
    true gradient is 0, and any backward that maps a constant dP to 0 looks right. The
    Jacobian without its leading P ⊙ factor, dS = dP − Σ_j dP_j P_j, is such a bug: it
    agrees with the correct backward to rounding under G = 1, and the random G exposes
    it. (Dropping the sum term instead, dS = P ⊙ dP, gives P ≠ 0 under G = 1: that bug
    the all-ones probe does see.)"""
    scores = numpy.random.default_rng(4).standard_normal((3, 5))
    probs, cache = softmax_forward(scores)
    ones = numpy.ones_like(probs)
    assert numpy.max(numpy.abs(softmax_backward(ones, cache))) <= FEW_ROUNDINGS  # the truth: 0
    assert numpy.max(numpy.abs(no_leading_factor(ones, cache))) <= FEW_ROUNDINGS  # blind
    assert numpy.min(numpy.abs(no_sum_term(ones, cache))) > BROKEN_ERROR  # seen: 0.022 at least

    # The random upstream gradient of check_layer rejects both bugs.
    assert_gradients_ok(check_layer(softmax_forward, softmax_backward, scores))
    for bug in (no_leading_factor, no_sum_term):
        assert check_layer(softmax_forward, bug, scores)["input"] > WRONG_JACOBIAN_ERROR


@settings(max_examples=max(1, 30 * settings().max_examples // 200))
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    Tq=st.integers(1, 4),
    T=st.integers(2, 6),
    scale=st.sampled_from([0.1, 0.5, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_checker_rejects_both_softmax_bugs_on_every_shape(B, H, Tq, T, scale, seed):
    """On scores (B, H, Tq, T) of any small shape with two keys or more, the checker
    accepts softmax_backward and rejects both wrong Jacobians: their errors exceed
    GRADCHECK_RTOL. (With one key softmax is the constant 1, whose true gradient 0 the
    first bug also gives.) Scores of order 0.1 to 1: at scale 3 two keys can saturate the
    softmax, whose gradient P(1 − P) then falls to about e^{-12}, below what float64
    finite differences resolve to GRADCHECK_RTOL (measured with the correct backward on
    two keys, worst of 50 upstream gradients: 1.2e-6 at a score gap of 10, 3.9e-5 at
    12; over 1500 random draws at scale 3, 2.2e-7, and 1.4e-9 at scale 1)."""
    scores = scale * numpy.random.default_rng(seed).standard_normal((B, H, Tq, T))
    assert_gradients_ok(check_layer(softmax_forward, softmax_backward, scores, seed=seed))
    for bug in (no_leading_factor, no_sum_term):
        assert check_layer(softmax_forward, bug, scores, seed=seed)["input"] > GRADCHECK_RTOL
