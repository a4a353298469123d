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
