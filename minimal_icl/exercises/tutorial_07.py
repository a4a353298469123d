"""Checks for tutorial 07: the alignment cos_F of two weight updates (Figure 4 of v1).

The reader writes the number Figure 4's alignment panel plots, one per prompt:

    cos_F(U, V) = ⟨U, V⟩_F / (‖U‖_F ‖V‖_F),   ⟨U, V⟩_F = trace(Uᵀ V) = Σ_{m,d} U_md V_md,

for batches U, V of shape (B, M, D), and the check compares it with
:func:`minimal_icl.experiments.common.cos_frobenius` on random updates (M ≠ D, so a
matrix product in place of the entrywise one fails loudly) and on two special pairs:
V = 3U (cos_F = 1) and V = −U (cos_F = −1).
Reference: Dherin et al. (2025), arXiv:2507.16003, Figure 4 (v1); docs/notation.md.
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..experiments.common import cos_frobenius
from ..validation import check_seed
from . import call_answer, check_array

__all__ = ["alignment_case", "check_cos_frobenius"]


def alignment_case(seed: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """U, V (B = 6, M = 7, D = 3): four random pairs, then (U, 3U) and (U, −U)."""
    rng = numpy.random.default_rng(seed)
    U = rng.standard_normal((6, 7, 3))
    V = rng.standard_normal((6, 7, 3)) + 0.5 * U  # correlated, so cos_F is not near 0
    V[4] = 3.0 * U[4]
    V[5] = -U[5]
    return U, V


def _row_cosines(U, V):
    """The mean over rows m of the cosine of row m of U with row m of V."""
    inner = numpy.sum(U * V, axis=-1)
    return numpy.mean(inner / (numpy.linalg.norm(U, axis=-1) * numpy.linalg.norm(V, axis=-1)), axis=-1)


def check_cos_frobenius(cos_f: Callable, seed: int = 0) -> None:
    """Check ``cos_f(U, V) -> (B,)`` against the package's cos_frobenius.

    Raises ExerciseError with a hint naming the mistake.
    """
    seed = check_seed(seed)
    U, V = alignment_case(seed)
    answer = call_answer(cos_f, U.copy(), V.copy(), name="cos_f",
                         on_value_error="U and V are stacks (B, M, D): ⟨U, V⟩_F = trace(Uᵀ V),"
                         " and U @ V of two (M, D) matrices does not exist for M ≠ D"
                         " (transpose U first: numpy.swapaxes(U, -1, -2) @ V);"
                         " numpy.trace uses axes 0 and 1 unless told (axis1=-2, axis2=-1),"
                         " numpy.sum(U * V, axis=(-2, -1)) gives ⟨U, V⟩_F per prompt and"
                         " numpy.linalg.norm(U, axis=(-2, -1)) gives ‖U‖_F per prompt"
                         " (numpy.linalg.norm(U, 'fro') needs that axis for a stack)")
    if isinstance(answer, numpy.generic):  # one NumPy scalar for the whole batch
        answer = numpy.asarray(answer)
    inner = numpy.sum(U * V, axis=(-2, -1))
    fro_U = numpy.linalg.norm(U, axis=(-2, -1))
    fro_V = numpy.linalg.norm(V, axis=(-2, -1))
    spectral = numpy.linalg.norm(U, 2, axis=(-2, -1)) * numpy.linalg.norm(V, 2, axis=(-2, -1))
    expected = numpy.asarray(cos_frobenius(U, V))
    check_array("cos_F", answer, expected, mistakes=[
        ("that is the inner product ⟨U, V⟩_F alone: divide by ‖U‖_F ‖V‖_F", inner),
        ("you divided by the squared norms; cos_F divides by ‖U‖_F ‖V‖_F, not their squares",
         inner / (fro_U**2 * fro_V**2)),
        ("you divided by ‖U‖_F² (or ‖V‖_F²): that is the projection coefficient, not the cosine",
         inner / fro_U**2),
        ("you used the spectral norm (numpy.linalg.norm(U, 2, ...)); cos_F uses the Frobenius"
         " norm, the square root of the sum of squares of all entries", inner / spectral),
        ("cos_F keeps its sign: V = −U gives −1 (no absolute value)", numpy.abs(expected)),
        ("that is the mean of the row-by-row cosines; cos_F treats each matrix as one vector"
         " of M·D entries", _row_cosines(U, V)),
        ("you divided by ‖U‖_F only: cos_F divides by ‖U‖_F ‖V‖_F", inner / fro_U),
        ("you summed every entry of Uᵀ V: ⟨U, V⟩_F is its trace, the sum of its diagonal",
         numpy.sum(numpy.swapaxes(U, -1, -2) @ V, axis=(-2, -1)) / (fro_U * fro_V)),
        ("the norms are taken over the whole batch: one norm per prompt, axis=(-2, -1)",
         inner / (numpy.linalg.norm(U) * numpy.linalg.norm(V))),
        ("the inner product is summed over the whole batch (numpy.vdot, or numpy.sum without"
         " axis): one ⟨U, V⟩_F per prompt, numpy.sum(U * V, axis=(-2, -1))",
         numpy.sum(U * V) / (fro_U * fro_V)),
        ("you summed every entry of U Vᵀ: ⟨U, V⟩_F is its trace, the sum of its diagonal",
         numpy.sum(U @ numpy.swapaxes(V, -1, -2), axis=(-2, -1)) / (fro_U * fro_V)),
        ("you took the mean of U ⊙ V over its M·D entries: ⟨U, V⟩_F is their sum",
         numpy.mean(U * V, axis=(-2, -1)) / (fro_U * fro_V)),
        ("the denominator is the product ‖U‖_F ‖V‖_F, not √(‖U‖_F² + ‖V‖_F²)",
         inner / numpy.sqrt(fro_U**2 + fro_V**2)),
        ("that is 1 − cos_F, the cosine distance (scipy.spatial.distance.cosine returns it):"
         " cos_F is the cosine itself, ⟨U, V⟩_F/(‖U‖_F ‖V‖_F)", 1.0 - expected),
    ])
