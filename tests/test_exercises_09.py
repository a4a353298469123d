"""Tutorial 09's checks pass the right answers and name each typical mistake."""

from __future__ import annotations

import numpy
import pytest

from minimal_icl.exercises import ExerciseError
from minimal_icl.exercises.tutorial_09 import (
    check_fraction_of_rising_steps,
    check_order_spread,
    order_spread,
    rising_fraction,
)


def test_reference_formulas_on_a_small_case():
    """order_spread and rising_fraction against values computed by hand."""
    p = numpy.array([[[0.0, 1.0]], [[2.0, 1.0]]])  # R = 2 orders, B = 1, N + 1 = 2
    numpy.testing.assert_allclose(order_spread(p), [1.0, 0.0], rtol=0, atol=0)
    e = numpy.array([[3.0, 2.0, 4.0], [1.0, 1.5, 0.5]])  # rising steps: 2 of 4
    assert rising_fraction(e) == 0.5


# -- the spread across orders ------------------------------------------------------------


def test_order_spread_right_answer_passes(capsys):
    assert check_order_spread(lambda p: numpy.std(p, axis=0).mean(axis=0)) <= 1e-12
    assert "✓ the spread across orders is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda p: numpy.std(p, axis=1).mean(axis=0), "across prompts"),
        (lambda p: numpy.var(p, axis=0).mean(axis=0), "that is the variance"),
        (lambda p: numpy.std(p, axis=0, ddof=1).mean(axis=0), "ddof = 1"),
        (lambda p: numpy.std(p.mean(axis=1), axis=0), "prompt-averaged"),
        (lambda p: numpy.sqrt(numpy.var(p, axis=0).mean(axis=0)), "square root and the mean"),
        (lambda p: numpy.std(p, axis=(0, 1)), "orders and prompts together"),
        (lambda p: numpy.std(p, axis=0).mean(axis=1), "one value per prompt"),
        (lambda p: numpy.std(p, axis=2).mean(axis=0), "one value per prompt"),
        (lambda p: numpy.std(p, axis=0).mean(), "returned one number"),
        (lambda p: numpy.std(p, axis=0), "one spread per prompt and step"),
        (lambda p: numpy.std(p, axis=0).T, "one spread per prompt and step"),
        (lambda p: (p.max(axis=0) - p.min(axis=0)).mean(axis=0), "the range across orders"),
        (lambda p: numpy.abs(p - p.mean(axis=0)).mean(axis=0).mean(axis=0),
         "mean absolute deviation"),
        (lambda p: numpy.median(numpy.std(p, axis=0), axis=0), "the median over prompts"),
        (lambda p: numpy.std(p, axis=3).mean(axis=0), "ValueError .*three axes"),
    ],
)
def test_order_spread_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_order_spread(wrong)


def test_order_spread_placeholder_and_wrong_shape():
    def placeholder(p):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_order_spread(placeholder)
    with pytest.raises(ExerciseError, match="shape"):
        check_order_spread(lambda p: numpy.std(p, axis=0))  # not averaged over prompts


# -- the fraction of rising steps --------------------------------------------------------


def test_rising_fraction_right_answer_passes(capsys):
    right = check_fraction_of_rising_steps(lambda e: numpy.mean(e[:, 1:] > e[:, :-1]))
    assert 0.0 < right < 1.0
    assert "✓ the fraction of rising steps is right" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda e: numpy.mean(e[:, 1:] < e[:, :-1]), "LOWER"),
        (lambda e: numpy.mean(e[:, 1:] >= e[:, :-1]), "unchanged too"),
        (lambda e: numpy.mean(numpy.diff(e.mean(axis=0)) > 0), "the trend"),
        (lambda e: numpy.mean(e[:, 1:] > e[:, :1]), "with e\\[b, 0\\]"),
        (lambda e: numpy.mean(e[1:] > e[:-1]), "neighbouring prompts"),
        (lambda e: numpy.sum(e[:, 1:] > e[:, :-1]) / e.shape[0], "not by B·N"),
        (lambda e: e[:, 1:] > e[:, :-1], "return one number"),
        (lambda e: 100 * numpy.mean(e[:, 1:] > e[:, :-1]), "a percentage"),
        (lambda e: numpy.sum(e[:, 1:] > e[:, :-1]), "a count"),
        (lambda e: numpy.sum(e[:, 1:] > e[:, :-1]) / e.size, "N steps per prompt"),
        (lambda e: numpy.mean(e[:, 2:] > e[:, :-2]), "e\\[b, i\\+2\\]"),
        (lambda e: numpy.mean(e[:, 2:] > e[:, 1:-1]), "skipped the first step"),
        (lambda e: numpy.mean(numpy.diff(e, axis=1)), "mean change of the error"),
        (lambda e: numpy.sum(e[:, 1:] > e[:, :-1]) / (e.shape[1] - 1), "divided the count by N"),
        (lambda e: numpy.mean(e[:, 1:-1] > e[:, :-2]), "skipped the last step"),
        (lambda e: numpy.mean(numpy.any(e[:, 1:] > e[:, :-1], axis=1)),
         "prompts with at least one rising step"),
        (lambda e: numpy.mean(e[:, -1] > e[:, 0]), "last error e\\[b, N\\]"),
        (lambda e: numpy.mean(e[:, 1:] > e[:, :-2]), "ValueError .*slices of the same shape"),
    ],
)
def test_rising_fraction_mistakes_get_their_hint(wrong, hint):
    with pytest.raises(ExerciseError, match=hint):
        check_fraction_of_rising_steps(wrong)


def test_rising_fraction_placeholder():
    def placeholder(e):
        raise NotImplementedError("your turn")

    with pytest.raises(ExerciseError, match="not written yet"):
        check_fraction_of_rising_steps(placeholder)
