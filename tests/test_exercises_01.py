"""Tutorial 01's checks pass the right softmax backwards and name each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.attention import softmax_backward
from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_01 import (
    check_softmax_backward,
    check_softmax_backward_explicit,
)


def explicit(dprobs, cache):
    P = cache.probs
    dscores = numpy.empty_like(dprobs)
    for index in numpy.ndindex(P.shape[:-1]):
        p = P[index]
        dscores[index] = (numpy.diag(p) - numpy.outer(p, p)).T @ dprobs[index]
    return dscores


def compact(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs * P, axis=-1, keepdims=True))


CHECKS = [check_softmax_backward_explicit, check_softmax_backward]


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("answer", [explicit, compact, softmax_backward])
def test_right_backwards_pass_both_checks(check, answer, capsys):
    error, residual = check(answer)
    assert error <= 1e-6 and residual <= 1e-12
    assert "✓" in capsys.readouterr().out


def plain_mean(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.mean(dprobs, axis=-1, keepdims=True))


def query_axis(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs * P, axis=-2, keepdims=True))


def diagonal_only(dprobs, cache):
    return cache.probs * dprobs


def diagonal_only_explicit(dprobs, cache):
    P = cache.probs
    dscores = numpy.empty_like(dprobs)
    for index in numpy.ndindex(P.shape[:-1]):
        dscores[index] = numpy.diag(P[index]) @ dprobs[index]  # J without −p pᵀ
    return dscores


def no_outer_factor(dprobs, cache):
    P = cache.probs
    return dprobs - numpy.sum(dprobs * P, axis=-1, keepdims=True)


def plus_sign(dprobs, cache):
    P = cache.probs
    return P * (dprobs + numpy.sum(dprobs * P, axis=-1, keepdims=True))


def negated(dprobs, cache):
    return -compact(dprobs, cache)


def unweighted_sum(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs, axis=-1, keepdims=True))


def mean_of_weighted(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.mean(dprobs * P, axis=-1, keepdims=True))


def every_axis(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs * P))


def batch_axis(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs * P, axis=0, keepdims=True))


def head_axis(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs * P, axis=1, keepdims=True))


def second_term_without_P(dprobs, cache):
    P = cache.probs
    return P * dprobs - numpy.sum(dprobs * P, axis=-1, keepdims=True)


def jacobian_diagonal_only(dprobs, cache):
    P = cache.probs
    return P * (1.0 - P) * dprobs  # J_kk dP_k alone


def placeholder(dprobs, cache):
    raise NotImplementedError("your turn")


def in_place(dprobs, cache):
    dprobs -= numpy.sum(dprobs * cache.probs, axis=-1, keepdims=True)
    dprobs *= cache.probs
    return dprobs


def no_keepdims(dprobs, cache):
    P = cache.probs
    return P * (dprobs - numpy.sum(dprobs * P, axis=-1))  # (…, T) against (…,): ValueError


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (diagonal_only, "−Σ_j dP_j P_j term is missing"),
        (diagonal_only_explicit, "−Σ_j dP_j P_j term is missing"),
        (plain_mean, "plain mean"),
        (query_axis, "wrong axis"),
        (no_outer_factor, "outer factor P is missing"),
        (plus_sign, "plus sign"),
        (negated, "wrong sign"),
        (placeholder, "not written yet"),
        (in_place, "changed dprobs in place"),
        (unweighted_sum, "without its weights"),
        (mean_of_weighted, "divided Σ_j dP_j P_j by T"),
        (every_axis, "over every axis at once"),
        (batch_axis, "wrong axis"),
        (head_axis, "wrong axis"),
        (second_term_without_P, "second term lacks its factor P"),
        (jacobian_diagonal_only, "only the diagonal of the Jacobian"),
    ],
)
def test_typical_mistakes_get_their_hint(check, answer, hint):
    with pytest.raises(ExerciseError, match=hint):
        check(answer)


def row_by_row(row_backward):
    """An explicit-stage answer: ``row_backward(p, dp)`` for each row, as the cell loops."""

    def softmax_backward_explicit(dprobs, cache):
        P = cache.probs
        dscores = numpy.empty_like(dprobs)
        for index in numpy.ndindex(P.shape[:-1]):
            dscores[index] = row_backward(P[index], dprobs[index])
        return dscores

    return softmax_backward_explicit


@pytest.mark.parametrize(
    ("row_backward", "hint"),
    [
        (lambda p, dp: (numpy.diag(p) - p @ p).T @ dp, "`p @ p` is the number"),
        (lambda p, dp: (numpy.diag(p) - numpy.outer(p, p)).T @ p, "multiplied p, not the"),
        (lambda p, dp: (p - numpy.outer(p, p)).T @ dp, "the matrix numpy.diag\\(p\\)"),
        (lambda p, dp: (numpy.eye(len(p)) - numpy.outer(p, p)).T @ dp, "not the identity"),
        (lambda p, dp: (numpy.diag(p) - numpy.outer(p, dp)).T @ dp, "numpy.outer\\(p, dp\\)"),
        (lambda p, dp: (numpy.diag(dp) - numpy.outer(p, p)).T @ dp, "numpy.diag\\(dp\\)"),
        (lambda p, dp: numpy.sum((numpy.diag(p) - numpy.outer(p, p)) * dp, axis=0),
         "dS is zero .*`J.T @ dp`"),
        (lambda p, dp: (numpy.diag(p) - numpy.outer(p, p)).T * dp,
         "ValueError .*matrix–vector product `J.T @ dp`"),
    ],
)
def test_explicit_stage_slips_get_their_hint(row_backward, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_softmax_backward_explicit(row_by_row(row_backward))


def test_a_shape_error_in_the_compact_stage_names_keepdims():
    with pytest.raises(ExerciseError, match="ValueError .*keepdims=True"):
        check_softmax_backward(no_keepdims)


def test_a_backward_that_is_wrong_only_under_the_gradient_checker_is_caught():
    """The check also runs the reader's backward through check_layer: a function that
    answers right on the first call and wrong afterwards (state kept between calls)
    passes the comparison with the library and fails the gradient check."""
    calls = []

    def stateful(dprobs, cache):
        calls.append(1)
        return compact(dprobs, cache) * (1.0 if len(calls) == 1 else 2.0)

    with pytest.raises(ExerciseError, match="gradient checker"):
        check_softmax_backward(stateful)
