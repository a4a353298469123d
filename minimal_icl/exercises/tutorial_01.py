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
mean or the unweighted sum of dP instead of its P-weighted sum, a sum over the wrong axis or
over every axis, a missing factor P, the diagonal of the Jacobian alone, and the slips of
the explicit stage (p @ p for p pᵀ, the identity or diag(dp) for diag(p), J applied to p
instead of dp, J ⊙ dp summed over the wrong index, which gives zero).
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..attention import softmax_backward, softmax_forward
from ..gradcheck import check_layer
from ..tolerances import GRADCHECK_RTOL, IDENTITY_RTOL
from ..validation import check_seed
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
    total = numpy.sum(dP, axis=-1, keepdims=True)  # Σ_j dP_j, (..., 1)
    squares = numpy.sum(P * P, axis=-1, keepdims=True)  # Σ_j P_j², (..., 1)
    mistakes = [
        ("the −Σ_j dP_j P_j term is missing: P ⊙ dP is only the diagonal part diag(P) of"
         " the Jacobian diag(P) − P Pᵀ; the −P Pᵀ part gives −P ⊙ Σ_j dP_j P_j",
         P * dP),
        ("you subtracted the plain mean of dP, (1/T) Σ_j dP_j; the Jacobian's −P Pᵀ part"
         " weights each dP_j by P_j: subtract Σ_j dP_j P_j",
         P * (dP - numpy.mean(dP, axis=-1, keepdims=True))),
        ("you subtracted Σ_j dP_j without its weights: the Jacobian's −P Pᵀ part weights"
         " each dP_j by P_j: subtract Σ_j dP_j P_j",
         P * (dP - total)),
        ("you divided Σ_j dP_j P_j by T (numpy.mean of dP ⊙ P): the weights P_j already"
         " do the averaging; take the plain sum, `numpy.sum(dP * P, axis=-1, keepdims=True)`",
         P * (dP - weighted / P.shape[-1])),
        ("the sum ran over every axis at once: one sum per row, over the keys only"
         " (axis=-1, keepdims=True)",
         P * (dP - numpy.sum(dP * P))),
    ]
    for axis in range(P.ndim - 1):  # every axis but the keys'
        mistakes.append(
            ("the sum runs over the wrong axis (a transposed reduction): j indexes the keys,"
             " the last axis of P, over which each row of P sums to 1",
             P * (dP - numpy.sum(dP * P, axis=axis, keepdims=True))))
    mistakes += [
        ("the outer factor P is missing: dS_k = P_k (dP_k − Σ_j dP_j P_j)",
         dP - weighted),
        ("the second term lacks its factor P: dS = P ⊙ dP − P ⊙ Σ_j dP_j P_j (P multiplies"
         " the whole bracket)",
         P * dP - weighted),
        ("the −P Pᵀ part enters with a plus sign: the Jacobian is diag(P) − P Pᵀ",
         P * (dP + weighted)),
        ("you returned −P Pᵀ dP alone: add the diagonal part diag(P) dP = P ⊙ dP",
         -P * weighted),
        ("this uses only the diagonal of the Jacobian, J_kk = P_k (1 − P_k); the −P Pᵀ part"
         " also couples k to every other key j: dS_k = P_k (dP_k − Σ_j dP_j P_j)",
         P * (1.0 - P) * dP),
        ("`p @ p` is the number Σ_j p_j², not the matrix p pᵀ: build it with"
         " numpy.outer(p, p)",
         P * dP - squares * total),
        ("the Jacobian multiplied p, not the upstream gradient: ds = Jᵀ dp",
         P * (P - squares)),
        ("`p - numpy.outer(p, p)` subtracts from p broadcast along the rows; the diagonal"
         " part is the matrix numpy.diag(p), with p on its diagonal",
         P * (total - weighted)),
        ("the diagonal part is diag(p), not the identity: ∂p_i/∂s_i = p_i (1 − p_i)",
         dP - P * weighted),
        ("numpy.diag(dp) brings the upstream gradient into the Jacobian: its diagonal part"
         " is diag(p), J = diag(p) − p pᵀ is made of p alone, and dp enters only through"
         " ds = Jᵀ dp",
         dP * dP - P * weighted),
        ("numpy.outer(p, dp) brings the upstream gradient into the Jacobian: J = diag(p) − p"
         " pᵀ is made of p alone, and dp enters only through ds = Jᵀ dp",
         P * dP - dP * weighted),
    ]
    return mistakes


# What a ValueError inside each stage usually means (NumPy's broadcasting message is quoted).
EXPLICIT_SHAPE_HINT = (
    "each row's answer dscores[index] has shape (T,): Jᵀ dp is the matrix–vector product"
    " `J.T @ dp` (J.T * dp, or a diag(dp), gives a (T, T) array)")
COMPACT_SHAPE_HINT = (
    "the answer has the shape of P, (..., T), and a sum over j must keep its axis to"
    " broadcast against P: `numpy.sum(..., axis=-1, keepdims=True)`")


def _check(backward: Callable, label: str, seed: int,
           shape_hint: str) -> tuple[float, float]:
    rng = numpy.random.default_rng(seed)
    scores = 2.0 * rng.standard_normal(SHAPE)  # spread-out scores: P far from uniform
    probs, cache = softmax_forward(scores)
    dprobs = rng.standard_normal(SHAPE)  # a random upstream gradient

    expected = softmax_backward(dprobs, cache)
    given = dprobs.copy()
    answer = call_answer(backward, given, cache, name=label, on_value_error=shape_hint)
    if not numpy.array_equal(given, dprobs):
        raise ExerciseError(
            f"{label} changed dprobs in place: a backward must leave its inputs as they are"
            f" (the caller may still need them); write `dprobs - ...` into a new array"
            f" instead of `dprobs -= ...`")
    values = numpy.asarray(answer) if isinstance(answer, numpy.ndarray) else None
    if (values is not None and values.shape == expected.shape
            and values.dtype.kind == "f" and numpy.all(numpy.isfinite(values))
            and numpy.max(numpy.abs(values)) <= IDENTITY_RTOL * numpy.max(numpy.abs(expected))):
        raise ExerciseError(
            "dS is zero (to rounding): the columns of J = diag(p) − p pᵀ sum to zero"
            " (Σ_i J_ik = p_k − p_k Σ_i p_i = 0), so a sum of J ⊙ dp over its first index"
            " i (`numpy.sum(J * dp, axis=0)`) vanishes; ds_k = Σ_i J_ik dp_i pairs dp with"
            " that same index i: `J.T @ dp`")
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
    seed = check_seed(seed)
    return _check(backward, getattr(backward, "__name__", "your backward"), seed,
                  EXPLICIT_SHAPE_HINT)


def check_softmax_backward(backward: Callable, seed: int = 1) -> tuple[float, float]:
    """Check the compact backward dS = P ⊙ (dP − Σ_j dP_j P_j), ``backward(dprobs, cache)``.

    The same two checks as :func:`check_softmax_backward_explicit`, on other draws.
    """
    seed = check_seed(seed)
    return _check(backward, getattr(backward, "__name__", "your backward"), seed,
                  COMPACT_SHAPE_HINT)
