"""Checks for tutorial 09 (what "gradient descent" means here).

Two "your turn" cells, the two measurements the tutorial's conclusions rest on:

1. the spread across orders (``check_order_spread``), the protocol of Shen, Mishra &
   Khashabi (2024): for predictions p[r, b, i] of R orders r of the same demonstrations,
   prompts b and path positions i,

       spread_i = (1/B) Σ_b std_r p[r, b, i]      (population std, ddof = 0),

   the standard deviation across orders, averaged over prompts;
2. the fraction of single steps that raise the query error
   (``check_fraction_of_rising_steps``): for squared errors e[b, i] of T_{W_i}(x),

       fraction = (1/(B N)) Σ_b Σ_{i<N} [e[b, i+1] > e[b, i]].

Each check compares the reader's function with the formula on fresh arrays and names the
typical mistakes: the wrong axis, the variance for the standard deviation, the spread of
the average, one std over orders and prompts pooled, the range, the mean absolute deviation
or the median over prompts in place of their mean, a mean over the steps, the stds not yet
averaged over prompts; the falling steps, the trend of the mean error, a comparison with
W_0 or of the last error with the first, the mean change of the error, the fraction of
prompts with a rising step, the first or the last step skipped, a count divided by N. A
ValueError inside the reader's function (an axis that does not exist, slices of different
lengths) comes back as a hint on the axes or the slices.
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..validation import check_seed
from . import ExerciseError, call_answer, check_array, check_scalar

__all__ = [
    "check_fraction_of_rising_steps",
    "check_order_spread",
    "order_spread",
    "rising_fraction",
]


def order_spread(predictions) -> numpy.ndarray:
    """(1/B) Σ_b std_r p[r, b, i] for predictions (R, B, N+1); returns (N+1,)."""
    return numpy.mean(numpy.std(numpy.asarray(predictions, dtype=numpy.float64), axis=0), axis=0)


def rising_fraction(errors) -> float:
    """The fraction of (b, i), i < N, with e[b, i+1] > e[b, i], for errors (B, N+1)."""
    e = numpy.asarray(errors, dtype=numpy.float64)
    return float(numpy.mean(e[:, 1:] > e[:, :-1]))


def _predictions(seed: int) -> numpy.ndarray:
    """(R, B, N+1) = (6, 5, 9) made-up predictions: a common trend, order-dependent noise."""
    rng = numpy.random.default_rng(seed)
    R, B, T = 6, 5, 9
    trend = rng.standard_normal((1, B, 1)) * numpy.linspace(0.0, 1.0, T)
    return trend + rng.standard_normal((R, B, T)) / (1.0 + numpy.arange(T))


def check_order_spread(function: Callable, seed: int = 0) -> float:
    """Check ``function(predictions) -> spread`` for predictions (R, B, N+1), spread (N+1,).

    Returns the relative residual; raises ExerciseError with a hint.
    """
    seed = check_seed(seed)
    label = getattr(function, "__name__", "your function")
    p = _predictions(seed)
    answer = call_answer(function, p.copy(), name=label,
                         on_value_error="predictions has three axes, (R, B, N+1): axis 0 the"
                         " orders, axis 1 the prompts, axis 2 the steps i; the std across"
                         " orders is `numpy.std(predictions, axis=0)` (B, N+1), then its mean"
                         " over axis 0")
    R, B, T = p.shape
    if numpy.shape(answer) == (B,):
        raise ExerciseError(
            f"{label} returned one value per prompt, shape ({B},): average over the prompts,"
            f" not over the steps; the std across orders (axis 0) is (B, N+1), its mean over"
            f" axis 0 is the (N+1,) spreads")
    if numpy.shape(answer) == ():
        raise ExerciseError(
            f"{label} returned one number: keep one spread per step i, an array of N + 1"
            f" values; average over the prompts only (axis 0 of the (B, N+1) stds)")
    if numpy.shape(answer) in ((B, T), (T, B)):
        raise ExerciseError(
            f"{label} returned shape {numpy.shape(answer)}: one spread per prompt and step;"
            f" the std across orders (axis 0) is (B, N+1) = ({B}, {T}): average it over the"
            f" prompts (its axis 0) to get the (N+1,) = ({T},) spreads")
    std_orders = numpy.std(p, axis=0)  # (B, N+1)
    mistakes = [
        ("you took the spread across prompts (axis 1): the orders are axis 0 of"
         " predictions (R, B, N+1); take the std over axis 0, then average over prompts",
         numpy.mean(numpy.std(p, axis=1), axis=0)),
        ("that is the variance: take the standard deviation across orders (the square root)"
         " before averaging over prompts", numpy.mean(numpy.var(p, axis=0), axis=0)),
        ("ddof = 1: use the population standard deviation (numpy's default, ddof = 0)",
         numpy.mean(numpy.std(p, axis=0, ddof=1), axis=0)),
        ("that is the spread of the prompt-averaged prediction: averaging over prompts first"
         " cancels most of the order effect; take each prompt's spread across orders, then"
         " average", numpy.std(numpy.mean(p, axis=1), axis=0)),
        ("the square root and the mean are swapped: average each prompt's standard deviation,"
         " not the variance", numpy.sqrt(numpy.mean(numpy.var(p, axis=0), axis=0))),
        ("that is one standard deviation over orders and prompts together, which counts how"
         " the prompts differ from each other; take each prompt's std across orders (axis 0),"
         " then average over prompts", numpy.std(numpy.reshape(p, (R * B, T)), axis=0)),
        ("that is the range across orders (largest minus smallest prediction): the spread is"
         " the standard deviation across orders, averaged over prompts",
         numpy.mean(numpy.max(p, axis=0) - numpy.min(p, axis=0), axis=0)),
        ("that is the mean absolute deviation from the mean over orders: the spread is the"
         " standard deviation, the square root of the mean squared deviation",
         numpy.mean(numpy.mean(numpy.abs(p - numpy.mean(p, axis=0)), axis=0), axis=0)),
        ("that is the median over prompts: the spread is the mean (1/B) Σ_b over prompts",
         numpy.median(std_orders, axis=0)),
    ]
    residual = check_array("the spread across orders", answer, numpy.mean(std_orders, axis=0),
                           mistakes=mistakes, quiet=True)
    print(f"✓ the spread across orders is right (relative residual {residual:.1e})")
    return residual


def _errors(seed: int) -> numpy.ndarray:
    """(B, N+1) = (40, 13) made-up squared errors: a falling trend, noisy single steps, and
    some steps that change nothing (a tie is not a rise)."""
    rng = numpy.random.default_rng(seed)
    B, T = 40, 13
    e = 2.0 / (1.0 + numpy.arange(T)) * numpy.exp(0.8 * rng.standard_normal((B, T)))
    e[:8, 5] = e[:8, 4]  # eight steps with e[b, i+1] = e[b, i]
    return e


def check_fraction_of_rising_steps(function: Callable, seed: int = 0) -> float:
    """Check ``function(errors) -> fraction`` for squared errors (B, N+1), a number in [0, 1].

    Returns the fraction; raises ExerciseError with a hint.
    """
    seed = check_seed(seed)
    label = getattr(function, "__name__", "your function")
    e = _errors(seed)
    answer = call_answer(function, e.copy(), name=label,
                         on_value_error="compare two slices of the same shape (B, N):"
                         " `errors[:, 1:]` (e[b, i+1], i = 0..N−1) against `errors[:, :-1]`"
                         " (e[b, i])")
    if isinstance(answer, numpy.generic):  # a NumPy scalar (numpy.mean's result)
        answer = numpy.asarray(answer)
    if numpy.ndim(answer) != 0 and numpy.size(answer) != 1:
        raise ExerciseError(
            f"{label} returned an array of shape {numpy.shape(answer)}: return one number,"
            f" the mean over every prompt b and every step i of [e[b, i+1] > e[b, i]]"
        )
    mean_curve = e.mean(axis=0)
    mistakes = [
        ("you counted the steps that LOWER the error: count e[b, i+1] > e[b, i]",
         float(numpy.mean(e[:, 1:] < e[:, :-1]))),
        ("you counted the steps that leave the error unchanged too (>=): a rise is a strict"
         " e[b, i+1] > e[b, i]", float(numpy.mean(e[:, 1:] >= e[:, :-1]))),
        ("you compared the mean error over prompts from step to step (the trend); the"
         " question is about single steps of single prompts",
         float(numpy.mean(mean_curve[1:] > mean_curve[:-1]))),
        ("you compared each e[b, i] with e[b, 0]: compare each step with the one before it",
         float(numpy.mean(e[:, 1:] > e[:, :1]))),
        ("you compared neighbouring prompts (axis 0): the steps run along axis 1",
         float(numpy.mean(e[1:] > e[:-1]))),
        ("you counted rising steps but divided by the number of prompts B, not by B·N",
         float(numpy.sum(e[:, 1:] > e[:, :-1]) / e.shape[0])),
        ("that is a percentage: return a fraction in [0, 1]",
         100.0 * float(numpy.mean(e[:, 1:] > e[:, :-1]))),
        ("that is a count: return the fraction, the count divided by the B·N steps",
         float(numpy.sum(e[:, 1:] > e[:, :-1]))),
        ("there are N steps per prompt (e has N + 1 columns, i = 0..N): divide by B·N,"
         " not B·(N + 1)", float(numpy.sum(e[:, 1:] > e[:, :-1]) / e.size)),
        ("you compared e[b, i+2] with e[b, i]: a step goes from i to i + 1",
         float(numpy.mean(e[:, 2:] > e[:, :-2]))),
        ("you skipped the first step (i = 0 → 1): every step counts",
         float(numpy.mean(e[:, 2:] > e[:, 1:-1]))),
        ("that is the mean change of the error per step: count the steps that raise it,"
         " [e[b, i+1] > e[b, i]] is 1 or 0, and average those", float(numpy.mean(numpy.diff(e)))),
        ("you divided the count by N, the steps of one prompt: divide by B·N, the steps of"
         " all prompts", float(numpy.sum(e[:, 1:] > e[:, :-1]) / (e.shape[1] - 1))),
        ("you skipped the last step (i = N − 1 → N): i runs over 0..N − 1, e[:, 1:] against"
         " e[:, :-1]", float(numpy.mean(e[:, 1:-1] > e[:, :-2]))),
        ("that is the fraction of prompts with at least one rising step: count every step"
         " (b, i) on its own and divide by B·N",
         float(numpy.mean(numpy.any(e[:, 1:] > e[:, :-1], axis=1)))),
        ("you compared the last error e[b, N] with the first e[b, 0]: that asks whether the"
         " whole path helped; the question is each single step, e[b, i+1] against e[b, i]",
         float(numpy.mean(e[:, -1] > e[:, 0]))),
    ]
    expected = rising_fraction(e)
    check_scalar("the fraction of rising steps", answer, expected, mistakes=mistakes, quiet=True)
    print(f"✓ the fraction of rising steps is right ({expected:.3f} on the check's errors)")
    return float(numpy.reshape(numpy.asarray(answer, dtype=numpy.float64), ()))
