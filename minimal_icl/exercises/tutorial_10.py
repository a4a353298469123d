"""Checks for tutorial 10 (how linear attention acquires in-context learning).

Two "your turn" cells:

1. the cubic feature of the merged key-query layer (``check_cubic_feature``):

       z = vec(β x_qᵀ) ∈ ℝ^{d²} (row-major),   β = (1/N) Σ_{n=1}^{N} y_n x_n,

   compared with ``linattn.cubic_feature`` and checked through ATTN_M: with v̄_i = ū_i = 0
   the layer's prediction must equal w₂ᵀ W₁ z for the corresponding weights;
2. the plateau levels of separate key-query attention (``check_plateau_losses``):

       L(M_m) = tr Λ − Σ_{d' ≤ m} λ_d' / (1 + (1 + tr Λ/λ_d')/N),   m = 0..d,

   eigenvalues in decreasing order, compared with ``linattn.plateau_losses`` and with the
   closed-form loss of principal component regression on m components.

Each check names the typical mistakes: a missing 1/N, x_q βᵀ instead of β x_qᵀ, the query
counted in β's average, a context pair left out of β, x_q read from column 0, β ⊙ x_q or
whole tokens for the outer product, the eigenvalues taken smallest first, the finite-N
factor left out, the tr Λ/λ term left out or inverted, tr Λ taken as 1 (the page's
normalisation), the eigenvalues in the order given, the m-th gain alone instead of the
cumulative sum, a missing m = 0 entry, an off-by-one in m, misplaced brackets, N + 1, a
partial trace, the removed sum alone, c_d for the gain, a minus in the denominator, the
levels reversed; and for z, the labels read from row 0.
Reference: Zhang, Singh, Latham & Saxe (ICML 2025, arXiv:2501.16265); docs/theory.md §9.
"""

from __future__ import annotations

from typing import Callable

import numpy

from .. import linattn as la
from ..tolerances import IDENTITY_RTOL, relative_residual
from . import ExerciseError, call_answer, check_array

__all__ = ["check_cubic_feature", "check_plateau_losses", "cubic_feature_mistakes",
           "plateau_mistakes"]

D_INPUT, N_CONTEXT = 3, 5  # small and unequal: a transposed or reshaped z differs


def cubic_feature_mistakes(X: numpy.ndarray) -> list[tuple[str, numpy.ndarray]]:
    """The typical wrong cubic features of the tokens X (B, d+1, N+1), with their hints."""
    B, D, T = X.shape
    d, N = D - 1, T - 1
    beta = X[:, :d, :N] @ X[:, d, :N, None] / N  # (B, d, 1)
    xq = X[:, None, :d, N]  # (B, 1, d)
    return [
        ("the 1/N of β is missing: β = (1/N) Σ_n y_n x_n",
         (N * beta @ xq).reshape(B, -1)),
        ("β is averaged over N + 1 tokens: the query is not a context pair, divide by N",
         (N / (N + 1) * beta @ xq).reshape(B, -1)),
        ("this is vec(x_q βᵀ): the outer product is β x_qᵀ (β's index first)",
         numpy.swapaxes(beta @ xq, 1, 2).reshape(B, -1)),
        ("β uses the query's x_q in place of the context inputs: β = (1/N) Σ_n y_n x_n",
         ((X[:, :d, N, None] * X[:, d, None, :N]).sum(-1)[..., None] / N @ xq).reshape(B, -1)),
        ("the sum over n leaves out the last context pair: n runs over all N context columns,"
         " X[:, :, :N] (the query is column N)",
         (X[:, :d, :N - 1] @ X[:, d, :N - 1, None] / N @ xq).reshape(B, -1)),
        ("the sum over n leaves out the first context pair: n runs over all N context columns,"
         " X[:, :, :N] (column 0 is c_1)",
         (X[:, :d, 1:N] @ X[:, d, 1:N, None] / N @ xq).reshape(B, -1)),
        ("x_q is read from column 0, which is the first context pair: the query is the last"
         " column, X[:, :d, N]", (beta @ X[:, None, :d, 0]).reshape(B, -1)),
        ("the labels y_n are read from row 0, the first input coordinate: y is the last row,"
         " X[:, d, :N]", (X[:, :d, :N] @ X[:, 0, :N, None] / N @ xq).reshape(B, -1)),
    ]


def check_cubic_feature(cubic_feature: Callable, seed: int = 0) -> float:
    """Run the reader's ``cubic_feature(X) -> z`` on fresh sequences and compare.

    X: (B, d+1, N+1) tokens as columns; z: (B, d²), z = vec(β x_qᵀ) row-major.
    Also checks the equivalence with ATTN_M through the reader's z.
    """
    cov = la.covariance(D_INPUT, seed=seed)
    data = la.sequences(6, N_CONTEXT, cov, seed=seed + 1)
    answer = call_answer(cubic_feature, data.X.copy(), name="cubic_feature")
    B, d = data.X.shape[0], D_INPUT
    if numpy.shape(answer) == (B, d):
        raise ExerciseError(
            f"z has d = {d} entries per prompt, expected d² = {d * d}: z = vec(β x_qᵀ) holds"
            f" every product β_i x_(q,j), an outer product (β[:, :, None] * x_q[:, None, :]),"
            f" not the entrywise β ⊙ x_q nor β alone")
    if numpy.shape(answer) == (B, (d + 1) ** 2):
        raise ExerciseError(
            f"z has (d + 1)² = {(d + 1) ** 2} entries per prompt, expected d² = {d * d}: β and"
            f" x_q use the inputs only, the first d rows of the columns, not the y-row")
    expected = la.cubic_feature(data.X)
    residual = check_array("z", answer, expected, mistakes=cubic_feature_mistakes(data.X))
    params = la.init_merged(D_INPUT, 3, 0.7, seed=seed + 2)
    out, _ = la.merged_forward(data.X, params)
    y_cubic, _ = la.cubic_forward(numpy.asarray(answer), la.merged_to_cubic(params))
    through_model = relative_residual(la.prediction(out), y_cubic)
    if not through_model <= IDENTITY_RTOL:
        raise ExerciseError(f"w₂ᵀ W₁ z with your z differs from ATTN_M's prediction by "
                            f"{through_model:.1e}")
    print(f"✓ and ATTN_M's prediction equals w₂ᵀ W₁ z with your z (residual {through_model:.1e})")
    return residual


def plateau_mistakes(eigenvalues, n_context: int) -> list[tuple[str, numpy.ndarray]]:
    """The typical wrong plateau levels, with their hints."""
    given = numpy.asarray(eigenvalues, dtype=numpy.float64)
    lam = numpy.sort(given)[::-1]
    N, tr = n_context, lam.sum()

    def levels(order, gain, start=tr):
        return start - numpy.concatenate([[0.0], numpy.cumsum(gain(order))])

    def right(l, trace=tr):
        return l / (1 + (1 + trace / l) / N)

    return [
        ("tr Λ is the sum of the eigenvalues, here not 1: the page's Λ is normalised to"
         " tr Λ = 1, the function must work for any Λ (lam.sum())",
         levels(lam, lambda l: right(l, 1.0), start=1.0)),
        ("tr Λ inside the gain is the sum of the eigenvalues, here not 1 (lam.sum())",
         levels(lam, lambda l: right(l, 1.0))),
        ("the eigenvalues are used in the order given: take them in decreasing order"
         " (lam, sorted in the cell's first line), whatever order they come in",
         levels(given, right)),
        ("L(M_m) removes the gains of all m learned directions: a cumulative sum over"
         " d' ≤ m, not the m-th gain alone",
         tr - numpy.concatenate([[0.0], right(lam)])),
        ("tr Λ/λ_d is inverted: the denominator is 1 + (1 + tr Λ/λ_d)/N",
         levels(lam, lambda l: l / (1 + (1 + l / tr) / N))),
        ("a sign: the denominator is 1 + (1 + tr Λ/λ_d)/N, larger than 1 (a finite context"
         " removes less than λ_d)", levels(lam, lambda l: l / (1 - (1 + tr / l) / N))),
        ("the eigenvalues are taken smallest first: the plateaus learn λ_1 ≥ λ_2 ≥ … in "
         "decreasing order", levels(lam[::-1], lambda l: l / (1 + (1 + tr / l) / N))),
        ("the finite-N factor is missing: each direction removes λ_d/(1 + (1 + tr Λ/λ_d)/N), "
         "not λ_d", levels(lam, lambda l: l)),
        ("the tr Λ/λ_d term is missing from the denominator 1 + (1 + tr Λ/λ_d)/N",
         levels(lam, lambda l: l / (1 + 1 / N))),
        ("the 1 in (1 + tr Λ/λ_d)/N is missing", levels(lam, lambda l: l / (1 + tr / l / N))),
        ("off by one: L(M_0) = tr Λ (nothing learned), and L(M_m) removes the first m"
         " directions λ_1..λ_m, not m + 1",
         numpy.append(levels(lam, lambda l: l / (1 + (1 + tr / l) / N))[1:],
                      levels(lam, lambda l: l / (1 + (1 + tr / l) / N))[-1])),
        ("check the brackets: λ_d/(1 + (1 + tr Λ/λ_d)/N), the /N divides (1 + tr Λ/λ_d) only",
         levels(lam, lambda l: l / (2 + tr / l) / N)),
        ("N is the number of context pairs, n_context, not N + 1",
         levels(lam, lambda l: l / (1 + (1 + tr / l) / (N + 1)))),
        ("tr Λ is the trace of the whole covariance, Σ of all d eigenvalues, the same in every"
         " term, not the sum of those learned so far",
         numpy.array([tr - sum(l / (1 + (1 + lam[:m].sum() / l) / N) for l in lam[:m])
                      for m in range(len(lam) + 1)])),
        ("that is what the learned directions remove: L(M_m) is tr Λ minus that sum",
         tr - levels(lam, lambda l: l / (1 + (1 + tr / l) / N))),
        ("each direction removes its gain λ_d/(1 + (1 + tr Λ/λ_d)/N), not the coefficient"
         " c_d = 1/(λ_d (1 + (1 + tr Λ/λ_d)/N)) of A_m",
         levels(lam, lambda l: 1 / (l * (1 + (1 + tr / l) / N)))),
        ("the levels are in reverse: m runs from 0 (L = tr Λ) up to d, so they fall",
         levels(lam, lambda l: l / (1 + (1 + tr / l) / N))[::-1]),
    ]


def check_plateau_losses(plateau_losses: Callable) -> float:
    """Run the reader's ``plateau_losses(eigenvalues, n_context) -> (d+1,)`` and compare
    with the package and with the loss of principal component regression."""
    # unsorted on purpose, and tr Λ = 2: an answer that assumes the page's tr Λ = 1 differs
    eigenvalues, N = numpy.array([0.2, 0.9, 0.6, 0.3]), 13
    answer = call_answer(plateau_losses, eigenvalues.copy(), N, name="plateau_losses")
    expected = la.plateau_losses(eigenvalues, N)
    mistakes = plateau_mistakes(eigenvalues, N)
    if numpy.shape(answer) == (4,):
        raise ExerciseError("L(M_m) has 4 entries: m runs from 0 (nothing learned, L = tr Λ) "
                            "to d, so there are d + 1 = 5 levels")
    residual = check_array("L(M_m)", answer, expected, mistakes=mistakes)
    cov = la.covariance(4, seed=1, eigenvalues=eigenvalues)
    pcr = [la.predictor_loss(la.pcr_matrix(cov, N, m), cov.Lambda, N) for m in range(5)]
    print(f"✓ and equal to the loss of PCR on the top m components (residual "
          f"{relative_residual(numpy.asarray(answer), numpy.asarray(pcr)):.1e})")
    return residual
