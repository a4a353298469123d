"""Tutorial 08's checks pass the right answers and name each typical mistake."""

from __future__ import annotations

import math

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_08 import (
    check_linear_attention_delta_A,
    check_von_oswald_weights,
)


# -- δA of linear attention --------------------------------------------------------------


def delta_A(attn, n_heads, removed, query, *, scale=True, transpose=False, with_query=False,
            one_head=False, skip_W_O=False, split_K_H=False, width=None, mean=False,
            concat_K_H=False):
    """The closed form, right by default; each keyword makes one typical mistake
    (width: a callable (K, H·K, D) -> the divisor of the scores in place of √K)."""
    if with_query:
        removed = numpy.concatenate([removed, query[:, None, :]], axis=1)
    B, n, _ = removed.shape
    H = 1 if one_head else n_heads
    if split_K_H:  # features as (K, H): head h gets features h, h + H, ...
        q = numpy.swapaxes((query @ attn.W_Q.T).reshape(B, -1, H), -1, -2)
        k = numpy.swapaxes((removed @ attn.W_K.T).reshape(B, n, -1, H), -1, -2)
        v = numpy.swapaxes((removed @ attn.W_V.T).reshape(B, n, -1, H), -1, -2)
    else:
        q = (query @ attn.W_Q.T).reshape(B, H, -1)
        k = (removed @ attn.W_K.T).reshape(B, n, H, -1)
        v = (removed @ attn.W_V.T).reshape(B, n, H, -1)
    K = attn.W_Q.shape[0] // n_heads
    memory = numpy.einsum("byhv,byhk->bhvk", k, v) if transpose else numpy.einsum(
        "byhv,byhk->bhvk", v, k)
    divisor = math.sqrt(K) if scale else 1.0
    if width is not None:
        divisor = width(K, attn.W_Q.shape[0], removed.shape[-1])
    heads = numpy.einsum("bhvk,bhk->bhv", memory, q) / divisor
    if mean:
        heads = heads / n
    concatenate_K_H = split_K_H or concat_K_H  # (B, H, K) -> (B, K, H) -> (B, H·K)
    if concatenate_K_H:
        heads = numpy.swapaxes(heads, -1, -2)
    heads = heads.reshape(B, -1)
    return heads if skip_W_O else heads @ attn.W_O.T


def test_delta_A_right_answer_passes(capsys):
    assert check_linear_attention_delta_A(delta_A) <= 1e-12
    assert "✓ δA is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"scale": False}, "1/√K of the scores is missing"),
        ({"transpose": True}, "memory is transposed"),
        ({"with_query": True}, "query's own term"),
        ({"one_head": True}, "one big head"),
        ({"skip_W_O": True}, "apply W_O"),
        ({"split_K_H": True}, "heads are split the wrong way"),
        ({"width": lambda K, HK, D: math.sqrt(HK)}, r"divided by √\(H·K\), the width of all"),
        ({"width": lambda K, HK, D: math.sqrt(D)}, "divided by √D, the token width"),
        ({"width": lambda K, HK, D: K}, "divided by K, not by its square root"),
        ({"width": lambda K, HK, D: math.sqrt(HK // K)}, r"divided by √H, the number of heads"),
        ({"concat_K_H": True}, "heads are concatenated the wrong way"),
        ({"mean": True}, r"a mean over the removed tokens: .* no 1/\|Y\|"),
    ],
)
def test_delta_A_mistakes_get_their_hint(mistake, hint):
    def wrong(attn, n_heads, removed, query):
        return delta_A(attn, n_heads, removed, query, **mistake)

    with pytest.raises(ExerciseError, match=hint):
        check_linear_attention_delta_A(wrong)


def test_delta_A_untransposed_weights_get_a_hint_not_a_numpy_error():
    def untransposed(attn, n_heads, removed, query):
        return query @ attn.W_Q  # W_Q x for rows is query @ W_Q.T: (B, D) @ (H·K, D) fails

    with pytest.raises(ExerciseError, match=r"ValueError .*`query_token @ attn.W_Q.T`"):
        check_linear_attention_delta_A(untransposed)


def test_delta_A_whole_context_and_placeholder():
    def placeholder(attn, n_heads, removed, query):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_linear_attention_delta_A(placeholder)
    with pytest.raises(ExerciseError, match="wrong sign"):
        check_linear_attention_delta_A(lambda a, h, r, q: -delta_A(a, h, r, q))


# -- von Oswald's weights ----------------------------------------------------------------


def weights(d, eta, N, theta0, *, corner=-1.0, transposed=False, no_theta=False, swap=False,
            P=None, full_key=False, minus_theta=False, copy_x=False, both=False):
    """von Oswald's (W_K, W_Q, W_V, W_P), right by default; keywords make the mistakes."""
    W_K = numpy.eye(d + 1) if full_key else numpy.diag([1.0] * d + [0.0])
    W_V = numpy.diag([1.0] * d + [0.0]) if copy_x else numpy.zeros((d + 1, d + 1))
    if both:
        W_V[:d, d] = theta0
    row = numpy.zeros(d) if no_theta else (-theta0 if minus_theta else theta0)
    if transposed:
        W_V[:d, d] = row
    else:
        W_V[d, :d] = row
    W_V[d, d] = corner
    W_P = eta / N * numpy.eye(d + 1) if P is None else P(eta, N, d)
    if swap:
        return W_V, W_V.copy(), W_K, W_P
    return W_K, W_K.copy(), W_V, W_P


def test_von_oswald_right_answer_passes(capsys):
    assert check_von_oswald_weights(weights) <= 1e-12
    assert "✓ W_K, W_Q, W_V, W_P are right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"P": lambda eta, N, d: eta * numpy.eye(d + 1)}, "the 1/N is missing"),
        ({"P": lambda eta, N, d: numpy.eye(d + 1) / N}, "step size η is missing"),
        ({"P": lambda eta, N, d: eta / N * math.sqrt(d + 1) * numpy.eye(d + 1)}, "W_O = √K W_P"),
        ({"P": lambda eta, N, d: -eta / N * numpy.eye(d + 1)}, "W_P has the wrong sign"),
        ({"corner": 1.0}, "the −1 has the wrong sign"),
        ({"transposed": True}, "transposed block"),
        ({"no_theta": True}, "θ_0 is missing"),
        ({"swap": True}, "roles are swapped"),
        ({"full_key": True}, "must not see the y-slot"),
        ({"minus_theta": True}, "θ_0 has the wrong sign"),
        ({"copy_x": True}, "top-left block of W_V must be zero, not I_d"),
        ({"both": True}, "both the last row and the last column"),
        ({"P": lambda eta, N, d: eta / (N + 1) * numpy.eye(d + 1)}, r"1/\(N\+1\) counts the query"),
        ({"P": lambda eta, N, d: eta / N * numpy.diag([0.0] * d + [1.0])},
         "in the y-entry alone gives the same layer"),
        ({"P": lambda eta, N, d: eta / N * numpy.eye(d)}, r"W_P acts on whole tokens"),
        ({"P": lambda eta, N, d: eta / N}, "W_P is a matrix, .* not the number η/N"),
        ({"P": lambda eta, N, d: eta / (2 * N) * numpy.eye(d + 1)},
         r"the 1/2 of L\(θ\) .* cancels against the 2"),
    ],
)
def test_von_oswald_mistakes_get_their_hint(mistake, hint):
    def wrong(d, eta, N, theta0):
        return weights(d, eta, N, theta0, **mistake)

    with pytest.raises(ExerciseError, match=hint):
        check_von_oswald_weights(wrong)


def test_von_oswald_wrong_return_and_placeholder():
    with pytest.raises(ExerciseError, match="four matrices .*got tuple of 3 items"):
        check_von_oswald_weights(lambda d, eta, N, theta0: weights(d, eta, N, theta0)[:3])

    def placeholder(d, eta, N, theta0):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_von_oswald_weights(placeholder)


def test_von_oswald_a_d_by_d_key_is_named():
    """W_K = W_Q = I_d (d, d), the identity on x alone: named by its own hint, not by the
    generic shape message."""
    def wrong(d, eta, N, theta0):
        W_K, W_Q, W_V, W_P = weights(d, eta, N, theta0)
        return numpy.eye(d), numpy.eye(d), W_V, W_P

    with pytest.raises(ExerciseError, match="act on whole tokens"):
        check_von_oswald_weights(wrong)


def test_von_oswald_step_moved_into_the_value_is_named():
    """W_V = (η/N)[[0, 0], [θ_0, −1]] with W_P = I: the same layer, named by its hint."""
    def wrong(d, eta, N, theta0):
        W_K, W_Q, W_V, W_P = weights(d, eta, N, theta0)
        return W_K, W_Q, eta / N * W_V, numpy.eye(d + 1)

    with pytest.raises(ExerciseError, match="η/N sits in W_V"):
        check_von_oswald_weights(wrong)


def test_von_oswald_value_and_projection_returned_swapped_are_named():
    def wrong(d, eta, N, theta0):
        W_K, W_Q, W_V, W_P = weights(d, eta, N, theta0)
        return W_K, W_Q, W_P, W_V

    with pytest.raises(ExerciseError, match=r"that is W_P .* in the order \(W_K, W_Q, W_V, W_P\)"):
        check_von_oswald_weights(wrong)
