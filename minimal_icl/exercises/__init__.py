"""Checks for the tutorials' "your turn" cells: one small function per exercise.

A tutorial's "your turn" cell asks the reader to write the body of a function (between
nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers); the next cell passes
that function to a check from this package. A check calls the reader's function on
fresh inputs, compares the answer with the package's own computation and either prints
a one-line confirmation or raises :class:`ExerciseError` with a hint that names the
mistake: not written yet, wrong shape, transposed, wrong sign, off by a constant factor,
or one of the typical mistakes the exercise lists (a missing division by ‖a‖², a missing
term of a backward, ...).

The checks of each tutorial live in ``minimal_icl.exercises.tutorial_NN``; this module
holds the machinery they share. In the student edition (``make student``) every solution
is replaced by ``raise NotImplementedError``, and the check reports the exercise as not
written yet: every check can fail, and the test suite makes sure each one does.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

import numpy

from ..backend import to_device
from ..implicit import outer
from ..tolerances import IDENTITY_RTOL, relative_residual

__all__ = ["ExerciseError", "call_answer", "check_array", "check_scalar"]

# An answer counts as one of the listed typical mistakes when it matches that mistake to
# this relative residual (looser than IDENTITY_RTOL: a mistake need not be exact to be
# recognised, and any other answer is still rejected).
MISTAKE_RTOL = 1e-6
# An answer computed in a lower precision (float32) that lies within this many of that
# precision's rounding units of the expected one is told so, not called wrong.
LOW_PRECISION_UNITS = 1e3


class ExerciseError(AssertionError):
    """A "your turn" answer is not right yet; the message says what looks wrong."""


def call_answer(function: Callable, *args, name: str | None = None,
                on_value_error: str | None = None, on_type_error: str | None = None,
                **kwargs):
    """Call the reader's function; whatever goes wrong in it becomes an ExerciseError.

    A placeholder still in it says the exercise is not written yet. A function whose
    signature cannot take the check's arguments (a parameter removed or renamed) is
    named before it runs. Any other exception raised inside the reader's function
    becomes an ExerciseError that quotes it; the original stays chained, so its
    traceback, shown above the ExerciseError, points at the reader's line.
    on_value_error, on_type_error: a hint added for a ValueError (NumPy's message for
    mismatched shapes, say) or a TypeError raised inside the reader's function.
    """
    label = name or getattr(function, "__name__", "your function")
    if not callable(function):
        raise ExerciseError(f"{label}: expected the function you wrote, got {type(function).__name__}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            raise ExerciseError(
                f"{label} cannot be called as the check calls it, with {len(args)}"
                f" argument{'s' if len(args) != 1 else ''} ({error}): keep the parameters"
                f" the exercise's cell gives it") from None
    try:
        return function(*args, **kwargs)
    except ExerciseError:
        raise
    except NotImplementedError as error:
        raise ExerciseError(
            f"{label} is not written yet ({error}): replace the `raise NotImplementedError`"
            f" line in its cell with your lines, run that cell, then this one."
        ) from None
    except Exception as error:
        kind, hint = type(error).__name__, None
        if isinstance(error, ValueError) and on_value_error is not None:
            kind, hint = "ValueError", on_value_error  # NumPy's AxisError is one too
        elif isinstance(error, TypeError) and on_type_error is not None:
            kind, hint = "TypeError", on_type_error
        if hint is None:
            hint = "the traceback above shows the line of your function that raised it"
        raise ExerciseError(f"{label} raised {kind} ({error}): {hint}") from error


def _as_host(value, name: str) -> numpy.ndarray:
    if value is None:
        raise ExerciseError(f"{name} is None: your function must return it (did you forget `return`?)")
    if isinstance(value, (numpy.ndarray, numpy.generic)):
        pass  # already on the host (a NumPy scalar such as numpy.float64 has no DLPack)
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        try:  # any other array-API array, brought to the host
            value = to_device(value, "numpy")
        except Exception as error:  # a PyTorch tensor that requires grad: a BufferError
            raise ExerciseError(f"{name}: a {type(value).__name__} that cannot be brought to"
                                f" NumPy ({error}); return a NumPy array") from error
    try:
        values = numpy.asarray(value)
    except (TypeError, ValueError):  # a ragged list
        raise ExerciseError(f"{name}: expected an array, got {type(value).__name__}") from None
    if values.dtype.kind == "c":  # casting would drop the imaginary part, with a warning
        raise ExerciseError(f"{name} is complex ({values.dtype}): expected real numbers")
    if values.dtype.kind not in "biuf":  # text would be parsed as a number
        raise ExerciseError(f"{name}: expected an array of numbers, got {type(value).__name__}"
                            f" of dtype {values.dtype}")
    return values.astype(numpy.float64)


def _constant_factor(answer: numpy.ndarray, expected: numpy.ndarray) -> float | None:
    """c when answer ≈ c · expected for a constant c ≠ 1 (least squares), else None."""
    scale = float(numpy.sum(expected * expected))
    if scale == 0.0:
        return None
    c = float(numpy.sum(answer * expected)) / scale
    if c == 0.0 or abs(c - 1.0) < 1e-9:
        return None
    if relative_residual(answer, c * expected) <= MISTAKE_RTOL:
        return c
    return None


def _rank_one(column: numpy.ndarray, a: numpy.ndarray, power: int = 2) -> numpy.ndarray:
    """column ⊗ a/‖a‖^power per prompt: (B, M), (B, D) -> (B, M, D) (the typical wrong
    updates of the exercises: power 2 is the theorem's row, 0 and 1 the usual slips)."""
    return outer(column, a / numpy.linalg.norm(a, axis=-1, keepdims=True) ** power)


def check_array(
    name: str,
    answer,
    expected,
    *,
    mistakes: Iterable[tuple[str, object]] = (),
    rtol: float = IDENTITY_RTOL,
    quiet: bool = False,
) -> float:
    """Compare the reader's array with the expected one; return the relative residual.

    name:     what the answer is, as the hint should call it ("ΔW", "dscores").
    mistakes: (hint, array) pairs: the arrays a typical mistake would give, each with the
              hint to print when the answer matches it.
    rtol:     the tolerance for a right answer (the package's IDENTITY_RTOL by default).

    Raises ExerciseError with a hint when the answer is wrong.
    """
    given_dtype = getattr(answer, "dtype", None)
    answer = _as_host(answer, name)
    expected = _as_host(expected, f"expected {name}")
    if answer.shape != expected.shape:
        _raise_named_mistake(name, answer, mistakes)  # a typical mistake of another shape
        hint = f"{name} has shape {answer.shape}, expected {expected.shape}"
        if answer.ndim >= 2 and answer.shape[:-2] + answer.shape[-2:][::-1] == expected.shape:
            hint += ": the last two axes look swapped (a transposed factor?)"
        elif answer.size == expected.size:
            hint += ": the right number of entries in the wrong layout (a reshape or transpose?)"
        elif expected.ndim >= 2 and answer.shape == expected.shape[1:]:
            hint += ": the leading (batch) axis is missing: one result per prompt"
        elif (answer.ndim == 2 and expected.ndim == 3
              and answer.shape == (expected.shape[0] * expected.shape[1],
                                   expected.shape[0] * expected.shape[2])):
            hint += (": numpy.outer flattens its inputs; one outer product per prompt is"
                     " `column[:, :, None] * row[:, None, :]`")
        raise ExerciseError(hint)
    if not numpy.all(numpy.isfinite(answer)):
        raise ExerciseError(f"{name} contains NaN or infinity: check for a division by zero")
    residual = relative_residual(answer, expected)
    if residual <= rtol:
        if not quiet:
            print(f"✓ {name} is right (relative residual {residual:.1e} ≤ {rtol:.0e})")
        return residual
    low_precision = given_dtype is not None and getattr(given_dtype, "kind", "") == "f" and (
        numpy.finfo(given_dtype).eps > numpy.finfo(numpy.float64).eps)
    if low_precision and residual <= LOW_PRECISION_UNITS * float(numpy.finfo(given_dtype).eps):
        raise ExerciseError(
            f"{name} is right only to {residual:.1e}: it was computed in {given_dtype};"
            f" compute in float64 (the inputs are float64: an explicit float32 array or"
            f" dtype somewhere?)")
    _raise_named_mistake(name, answer, mistakes)
    if answer.ndim >= 2 and answer.shape[-1] == answer.shape[-2]:
        if relative_residual(answer, numpy.swapaxes(expected, -1, -2)) <= MISTAKE_RTOL:
            raise ExerciseError(f"{name} is the transpose of the right answer: swap the factors")
    if relative_residual(answer, -expected) <= MISTAKE_RTOL:
        raise ExerciseError(f"{name} has the wrong sign: check which difference you take")
    c = _constant_factor(answer, expected)
    if c is not None:
        raise ExerciseError(
            f"{name} is {c:.4g} times the right answer: a missing or extra scale factor"
            f" (a norm, a 1/N, a step size?)"
        )
    raise ExerciseError(
        f"{name} is not right: relative residual {residual:.2e} against the expected answer"
        f" (tolerance {rtol:.0e}); shapes agree, so look at the formula itself"
    )


def _raise_named_mistake(name: str, answer, mistakes) -> None:
    """ExerciseError with the hint of the first mistake whose array the answer matches
    (same shape, within MISTAKE_RTOL); nothing when it matches none."""
    for hint, wrong in mistakes:
        wrong = _as_host(wrong, hint)
        if wrong.shape == answer.shape and relative_residual(answer, wrong) <= MISTAKE_RTOL:
            raise ExerciseError(f"{name} is not right: {hint}")


def check_scalar(name: str, answer, expected, *, rtol: float = IDENTITY_RTOL,
                 mistakes: Iterable[tuple[str, object]] = (), quiet: bool = False) -> float:
    """check_array for one number (a loss, a step size, a rank)."""
    values = _as_host(answer, name)
    if values.size != 1:
        raise ExerciseError(f"{name} must be one number, got an array of shape {values.shape}")
    return check_array(name, numpy.reshape(values, ()), expected,
                       rtol=rtol, mistakes=mistakes, quiet=quiet)
