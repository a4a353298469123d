"""Tutorial 10's checks pass the right answers and name each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_10 import check_cubic_feature, check_plateau_losses


def cubic(X, *, scale=True, average_over=None, transpose=False, query_beta=False):
    """z = vec(β x_qᵀ), right by default; each keyword makes one typical mistake."""
    B, D, T = X.shape
    d, N = D - 1, T - 1
    inputs = numpy.repeat(X[:, :d, N, None], N, axis=2) if query_beta else X[:, :d, :N]
    beta = (inputs * X[:, None, d, :N]).sum(-1)
    beta = beta / (average_over or N) if scale else beta
    z = beta[:, :, None] * X[:, None, :d, N]
    return (numpy.swapaxes(z, 1, 2) if transpose else z).reshape(B, -1)


def test_cubic_feature_right_answer_passes(capsys):
    assert check_cubic_feature(cubic) <= 1e-12
    out = capsys.readouterr().out
    assert "✓ z is right" in out and "ATTN_M's prediction" in out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"scale": False}, "1/N of β is missing"),
        ({"average_over": 6}, "N \\+ 1 tokens"),
        ({"transpose": True}, "vec\\(x_q βᵀ\\)"),
        ({"query_beta": True}, "query's x_q"),
    ],
)
def test_cubic_feature_mistakes_are_named(mistake, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_cubic_feature(lambda X: cubic(X, **mistake))


def test_cubic_feature_placeholder_is_not_written_yet():
    def placeholder(X):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_cubic_feature(placeholder)


def levels(eigenvalues, n_context, *, order="decreasing", finite_n=True, trace_term=True,
           one=True, with_zero=True):
    """L(M_m), right by default; each keyword makes one typical mistake."""
    lam = numpy.sort(numpy.asarray(eigenvalues, dtype=float))
    lam = lam[::-1] if order == "decreasing" else lam
    tr, N = lam.sum(), n_context
    if finite_n:
        gain = lam / (1 + ((1 if one else 0) + (tr / lam if trace_term else 0)) / N)
    else:
        gain = lam
    out = tr - numpy.concatenate([[0.0], numpy.cumsum(gain)])
    return out if with_zero else out[1:]


def test_plateau_losses_right_answer_passes(capsys):
    assert check_plateau_losses(levels) <= 1e-12
    out = capsys.readouterr().out
    assert "✓ L(M_m) is right" in out and "PCR" in out


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        ({"order": "increasing"}, "smallest first"),
        ({"finite_n": False}, "finite-N factor is missing"),
        ({"trace_term": False}, "tr Λ/λ_d term is missing"),
        ({"one": False}, "the 1 in"),
        ({"with_zero": False}, "m runs from 0"),
    ],
)
def test_plateau_mistakes_are_named(mistake, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_plateau_losses(lambda lam, n: levels(lam, n, **mistake))


def _beta(X, columns):
    """(1/N) Σ_n y_n x_n over the given context columns, N the number of context pairs."""
    d, N = X.shape[1] - 1, X.shape[2] - 1
    return (X[:, :d, columns] * X[:, None, d, columns]).sum(-1) / N


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda X: _beta(X, slice(0, -2))[:, :, None] * X[:, None, :-1, -1],
         "leaves out the last context pair"),
        (lambda X: _beta(X, slice(1, -1))[:, :, None] * X[:, None, :-1, -1],
         "leaves out the first context pair"),
        (lambda X: _beta(X, slice(0, -1))[:, :, None] * X[:, None, :-1, 0], "column 0"),
        (lambda X: _beta(X, slice(0, -1)) * X[:, :-1, -1], "entrywise β ⊙ x_q"),
        (lambda X: (X[:, :, :-1] * X[:, None, -1, :-1]).sum(-1)[:, :, None] / (X.shape[2] - 1)
         * X[:, None, :, -1], "not the y-row"),
    ],
)
def test_cubic_feature_more_mistakes_are_named(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_cubic_feature(lambda X: wrong(X).reshape(X.shape[0], -1))


def _levels_from(gain, m_shift=0, partial_trace=False):
    """tr Λ − Σ_{d' ≤ m + m_shift} gain(λ_d', tr), m = 0..d; tr the learned part if asked."""
    def levels_(eigenvalues, n_context):
        lam = numpy.sort(numpy.asarray(eigenvalues, dtype=float))[::-1]
        out = []
        for m in range(len(lam) + 1):
            learned = lam[:min(m + m_shift, len(lam))]
            tr = learned.sum() if partial_trace else lam.sum()
            out.append(lam.sum() - sum(gain(l, tr, n_context) for l in learned))
        return numpy.array(out)
    return levels_


def right_gain(l, tr, N):
    """What direction l removes: λ/(1 + (1 + tr Λ/λ)/N)."""
    return l / (1 + (1 + tr / l) / N)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_levels_from(right_gain, m_shift=1), "off by one"),
        (_levels_from(lambda l, tr, N: l / (1 + 1 + tr / l) / N), "check the brackets"),
        (_levels_from(lambda l, tr, N: l / (1 + (1 + tr / l) / (N + 1))), "not N \\+ 1"),
        (_levels_from(right_gain, partial_trace=True), "whole covariance"),
        (lambda lam, n: numpy.sum(lam) - levels(lam, n), "tr Λ minus that sum"),
        (_levels_from(lambda l, tr, N: 1 / (l * (1 + (1 + tr / l) / N))), "not the coefficient"),
        (lambda lam, n: levels(lam, n)[::-1], "in reverse"),
    ],
)
def test_plateau_more_mistakes_are_named(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_plateau_losses(wrong)


def test_the_helpers_right_forms_pass():
    """The helpers above make their mistakes on top of answers the checks accept."""
    assert check_plateau_losses(_levels_from(right_gain)) <= 1e-12
    assert check_cubic_feature(
        lambda X: (_beta(X, slice(0, -1))[:, :, None] * X[:, None, :-1, -1]).reshape(
            X.shape[0], -1)) <= 1e-12


def _levels_with(gain, *, start=None, order="decreasing", cumulative=True):
    """start − Σ_{d' ≤ m} gain(λ_d', tr Λ, N) (start = tr Λ unless given), m = 0..d."""
    def levels_(eigenvalues, n_context):
        lam = numpy.asarray(eigenvalues, dtype=float)
        lam = numpy.sort(lam)[::-1] if order == "decreasing" else lam
        g = gain(lam, lam.sum(), n_context)
        removed = numpy.cumsum(g) if cumulative else g
        return (lam.sum() if start is None else start) - numpy.concatenate([[0.0], removed])
    return levels_


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_levels_with(lambda l, tr, N: right_gain(l, 1.0, N), start=1.0), "here not 1"),
        (_levels_with(lambda l, tr, N: right_gain(l, 1.0, N)), "inside the gain"),
        (_levels_with(right_gain, order="given"), "in the order given"),
        (_levels_with(right_gain, cumulative=False), "cumulative sum"),
        (_levels_with(lambda l, tr, N: l / (1 + (1 + l / tr) / N)), "inverted"),
        (_levels_with(lambda l, tr, N: l / (1 - (1 + tr / l) / N)), "a sign"),
    ],
)
def test_plateau_trace_order_and_sum_mistakes_are_named(wrong, hint):
    """tr Λ = 1 (the page's normalisation) hard-coded, the eigenvalues left unsorted, the
    m-th gain alone, tr Λ/λ inverted, a minus for the plus: each is named, none passes."""
    with pytest.raises(ExerciseError, match=hint):
        check_plateau_losses(wrong)


def test_cubic_feature_labels_from_row_0_are_named():
    def wrong(X):
        d, N = X.shape[1] - 1, X.shape[2] - 1
        beta = (X[:, :d, :N] * X[:, None, 0, :N]).sum(-1) / N
        return (beta[:, :, None] * X[:, None, :d, N]).reshape(X.shape[0], -1)

    with pytest.raises(ExerciseError, match="read from row 0"):
        check_cubic_feature(wrong)
