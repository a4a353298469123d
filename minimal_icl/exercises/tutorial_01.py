"""Checks for tutorial 01 (a block by hand): the softmax backward, in two stages.

The reader writes the backward of P = softmax(S) over the last axis twice, as CS231n
stages it:

1. explicitly, row by row: build the Jacobian J = ∂P/∂S = diag(p) − p pᵀ of one row p
   and return dS = Jᵀ dP for that row (``check_softmax_backward_explicit``);
2. compactly, for all rows at once: dS = P ⊙ (dP − Σ_j dP_j P_j)
   (``check_softmax_backward``).

Each check runs the reader's backward two ways: through the package's gradient checker
(``minimal_icl.gradcheck.check_layer``: central finite differences of Σ P ⊙ G for a
random upstream gradient G) and against the library's ``softmax_backward`` on a fresh
random dP, with hints for the typical mistakes: the missing −Σ_j dP_j P_j term, the plain
mean of dP instead of its P-weighted mean, a sum over the wrong (query) axis, a missing
factor P.
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..attention import softmax_backward, softmax_forward
from ..gradcheck import check_layer
from ..tolerances import GRADCHECK_RTOL
from . import ExerciseError, call_answer, check_array

__all__ = [
    "check_softmax_backward",
    "check_softmax_backward_explicit",
    "softmax_backward_mistakes",
]

SHAPE = (2, 3, 4, 5)  # (B, H, Tq, T): 2 prompts, 3 heads, 4 query rows, 5 keys


def softmax_backward_mistakes(
    dprobs: numpy.ndarray, probs: numpy.ndarray
) -> list[tuple[str, numpy.ndarray]]:
    """The typical wrong softmax backwards for upstream dP and weights P, each with its hint.

    dP, P (..., T). The right answer is P ⊙ (dP − Σ_j dP_j P_j), j over the last axis.
    """
    P, dP = probs, dprobs
    weighted = numpy.sum(dP * P, axis=-1, keepdims=True)  # Σ_j dP_j P_j, (..., 1)
    return [
        ("the −Σ_j dP_j P_j term is missing: P ⊙ dP is only the diagonal part diag(P) of"
         " the Jacobian diag(P) − P Pᵀ; the −P Pᵀ part gives −P ⊙ Σ_j dP_j P_j",
         P * dP),
        ("you subtracted the plain mean of dP, (1/T) Σ_j dP_j; the Jacobian's −P Pᵀ part"
         " weights each dP_j by P_j: subtract Σ_j dP_j P_j",
         P * (dP - numpy.mean(dP, axis=-1, keepdims=True))),
        ("the sum runs over the wrong axis (a transposed reduction): j indexes the keys, the"
         " last axis of P, over which each row of P sums to 1",
         P * (dP - numpy.sum(dP * P, axis=-2, keepdims=True))),
        ("the outer factor P is missing: dS_k = P_k (dP_k − Σ_j dP_j P_j)",
         dP - weighted),
        ("the −P Pᵀ part enters with a plus sign: the Jacobian is diag(P) − P Pᵀ",
         P * (dP + weighted)),
        ("you returned −P Pᵀ dP alone: add the diagonal part diag(P) dP = P ⊙ dP",
         -P * weighted),
    ]


def _check(backward: Callable, label: str, seed: int) -> tuple[float, float]:
    rng = numpy.random.default_rng(seed)
    scores = 2.0 * rng.standard_normal(SHAPE)  # spread-out scores: P far from uniform
    probs, cache = softmax_forward(scores)
    dprobs = rng.standard_normal(SHAPE)  # a random upstream gradient

    expected = softmax_backward(dprobs, cache)
    given = dprobs.copy()
    answer = call_answer(backward, given, cache, name=label,
                         on_value_error="each row's answer has shape (T,), and a sum over j"
                         " must keep its axis to broadcast against P:"
                         " `numpy.sum(..., axis=-1, keepdims=True)`")
    if not numpy.array_equal(given, dprobs):
        raise ExerciseError(
            f"{label} changed dprobs in place: a backward must leave its inputs as they are"
            f" (the caller may still need them); write `dprobs - ...` into a new array"
            f" instead of `dprobs -= ...`")
    residual = check_array(
        "dS", answer, expected,
        mistakes=softmax_backward_mistakes(dprobs, probs), quiet=True,
    )

    def reader_backward(dout, c):
        return call_answer(backward, dout, c, name=label)

    error = check_layer(softmax_forward, reader_backward, scores, seed=seed + 1)["input"]
    if not error <= GRADCHECK_RTOL:
        raise ExerciseError(
            f"{label} agrees with the library's backward but the gradient checker reports a"
            f" relative error {error:.1e} > {GRADCHECK_RTOL:.0e}: does your function read"
            f" its input arrays in place or keep state between calls?"
        )
    print(f"✓ {label} is right: gradient check {error:.1e} ≤ {GRADCHECK_RTOL:.0e},"
          f" against the library's softmax_backward {residual:.1e}")
    return error, residual


def check_softmax_backward_explicit(backward: Callable, seed: int = 0) -> tuple[float, float]:
    """Check the row-by-row backward ``backward(dprobs, cache) -> dscores``, built from the
    Jacobian J_ik = ∂P_i/∂S_k = P_i (δ_ik − P_k) of each row.

    Runs it through check_layer (finite differences, random upstream gradient) and
    compares it with ``softmax_backward`` on (B, H, Tq, T) = (2, 3, 4, 5) arrays.
    Returns (gradient-check error, relative residual). Raises ExerciseError with a hint.
    """
    return _check(backward, getattr(backward, "__name__", "your backward"), seed)


def check_softmax_backward(backward: Callable, seed: int = 1) -> tuple[float, float]:
    """Check the compact backward dS = P ⊙ (dP − Σ_j dP_j P_j), ``backward(dprobs, cache)``.

    The same two checks as :func:`check_softmax_backward_explicit`, on other draws.
    """
    return _check(backward, getattr(backward, "__name__", "your backward"), seed)
