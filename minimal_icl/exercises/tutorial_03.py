"""Checks for tutorial 03 (which update?): the null-space part of a perturbation.

Theorem 2.2 (Dherin et al. 2025, arXiv:2507.16003, Theorem 2.2 in v1) needs only
X a = W δ of the update X, with a = A(C\\Y, x). Its ΔW is one solution; ΔW + Z is another
exactly when Z a = 0. The reader writes the projection that turns any matrix Z into one
that annihilates a,

    Z_⊥ = Z (I − a aᵀ/‖a‖²),

as ``null_space_part(Z, a) -> Z_⊥`` with Z (B, M, D) and a (B, D). ``check_null_space``
compares the answer with the package's ``null_space_perturbation(update, Z) − ΔW``, checks
Z_⊥ a = 0, and runs the patched forward with ΔW + Z_⊥, which must reproduce the
with-context output at the query. Hints name the typical mistakes: a missing ‖a‖², a
division by ‖a‖, the projection onto a instead of away from it, the correction alone or
without its row aᵀ, an entrywise product for the matrix product, the projector applied to
the rows instead of the columns, one ‖a‖² for the whole batch or prompt 0's for all, the
correction subtracted twice (the reflection I − 2 a aᵀ/‖a‖²), a division by ‖a‖⁴ (the unit
vector a/‖a‖ divided by ‖a‖² again), a zero Z_⊥, and (as shape errors) a numpy.outer that
flattens the batch.
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..block import BlockPatch
from ..config import TransformerConfig
from ..implicit import implicit_update, null_space_perturbation
from ..model import forward
from ..params import ModelParams
from ..tolerances import IDENTITY_RTOL, relative_residual
from ..validation import check_config, check_positive_int, check_seed
from . import ExerciseError, call_answer, check_array

__all__ = ["check_null_space", "null_space_mistakes"]


def null_space_mistakes(Z, a) -> list[tuple[str, numpy.ndarray]]:
    """The typical wrong projections of Z (B, M, D) for a (B, D), each with its hint."""
    Z, a = numpy.asarray(Z, dtype=numpy.float64), numpy.asarray(a, dtype=numpy.float64)
    Za = Z @ a[:, :, None]  # (B, M, 1)
    norm = numpy.linalg.norm(a, axis=-1)[:, None, None]  # (B, 1, 1)
    a_row = a[:, None, :]  # (B, 1, D)
    mistakes = [
        ("the division by ‖a‖² is missing: I − a aᵀ is a projector only for ‖a‖ = 1;"
         " use I − a aᵀ/‖a‖²", Z - Za * a_row),
        ("you divided by ‖a‖ instead of ‖a‖²: (a aᵀ/‖a‖) a = ‖a‖ a ≠ a",
         Z - Za * a_row / norm),
        ("this is the part of Z along a, Z a aᵀ/‖a‖², the part that must go: Z_⊥ is Z"
         " minus it", Za * a_row / norm**2),
        ("the sign of the correction is flipped: Z_⊥ = Z − (Z a) aᵀ/‖a‖²",
         Z + Za * a_row / norm**2),
        ("‖a‖² is summed over every prompt at once: each prompt has its own a, so sum the"
         " squares over the last axis only (one ‖a‖² per prompt, shape (B, 1, 1))",
         Z - Za * a_row / numpy.sum(a * a)),
        ("Z_⊥ equals Z: nothing was removed; subtract the part along a, (Z a) aᵀ/‖a‖²", Z),
        ("the correction lacks its row aᵀ: (Z a)/‖a‖² is a column (B, M, 1), subtracted from"
         " every entry of its row; (Z a) aᵀ/‖a‖² is an (M, D) matrix per prompt:"
         " `Za * a[:, None, :]`", Z - Za / norm**2),
        ("this is only the correction, −(Z a) aᵀ/‖a‖²: Z_⊥ is Z plus it", -Za * a_row / norm**2),
        ("Z ⊙ (1 − a²/‖a‖²) multiplies entry by entry, which keeps only the diagonal of the"
         " projector: Z (I − a aᵀ/‖a‖²) is a matrix product (@), or Z − (Z a) aᵀ/‖a‖²",
         Z * (1.0 - a_row**2 / norm**2)),
        ("every prompt was divided by prompt 0's ‖a‖²: each prompt b has its own ‖a_b‖²,"
         " `numpy.sum(a * a, axis=-1)[:, None, None]` (B, 1, 1)",
         Z - Za * a_row / numpy.sum(a[0] * a[0])),
        ("every prompt used prompt 0's a: each prompt b has its own a_b (a is (B, D))",
         Z - (Z @ a[0])[:, :, None] * a[0] / numpy.sum(a[0] * a[0])),
        ("the correction is subtracted twice: Z (I − 2 a aᵀ/‖a‖²) is the reflection"
         " across the plane orthogonal to a (a Householder matrix), which sends Z a to −Z a;"
         " the projector subtracts the part along a once", Z - 2.0 * Za * a_row / norm**2),
        ("the correction is divided by ‖a‖⁴: with the unit vector â = a/‖a‖ the projector"
         " is I − â âᵀ, with no further division by ‖a‖²", Z - Za * a_row / norm**4),
        ("Z_⊥ = 0 annihilates a, but it is not the part of Z orthogonal to a:"
         " Z_⊥ = Z − (Z a) aᵀ/‖a‖² keeps everything of Z but its part along a",
         numpy.zeros_like(Z)),
    ]
    if Z.shape[-1] == Z.shape[-2]:  # only then can the projector act from the left
        left = Z - a[:, :, None] * (a_row @ Z) / norm**2  # (I − a aᵀ/‖a‖²) Z
        mistakes.append(("the projector multiplies Z from the left; Z_⊥ a = 0 needs it on the"
                         " right: Z (I − a aᵀ/‖a‖²)", left))
    return mistakes


def check_null_space(
    null_space_part: Callable,
    params: ModelParams,
    config: TransformerConfig,
    n_prompts: int = 16,
    n_context: int = 10,
    seed: int = 0,
) -> float:
    """Check ``null_space_part(Z, a) -> Z_⊥ (B, M, D)`` with Z_⊥ = Z (I − a aᵀ/‖a‖²).

    Draws fresh prompts (standard normal tokens) and a random Z (B, M, D), computes the
    first block's update with ``implicit_update`` (Y = C, so a = u_∅ = A(x) in the
    paper's block), calls the reader's function on (Z, a), then

    1. compares the answer with ``null_space_perturbation(update, Z) − update.delta_W``
       (relative residual ≤ IDENTITY_RTOL), with a hint for each typical mistake;
    2. checks Z_⊥ a = 0 relative to ‖Z‖ ‖a‖;
    3. runs the query alone with W + ΔW + Z_⊥ and compares the output at the query with
       the with-context output (≤ IDENTITY_RTOL).

    One-block models only. Returns the residual of the patched forward.
    Raises ExerciseError with a hint.
    """
    check_config(config)
    n_prompts = check_positive_int("n_prompts", n_prompts)
    n_context = check_positive_int("n_context", n_context)
    seed = check_seed(seed)
    if config.n_blocks != 1:
        raise ValueError(
            f"check_null_space: expected a one-block model, config has {config.n_blocks} blocks"
        )
    rng = numpy.random.default_rng(seed)
    tokens = rng.standard_normal((n_prompts, n_context + 1, config.d_token))
    context, query = tokens[:, :-1], tokens[:, -1]
    with_context, _ = forward(params, config, tokens, last_only=True)
    (update,) = implicit_update(params, config, context, query)
    Z = rng.standard_normal((n_prompts, config.d_mlp, config.d_token))
    a = update.u_without  # (B, D)

    label = getattr(null_space_part, "__name__", "your function")
    answer = call_answer(null_space_part, Z.copy(), a.copy(), name=label,
                         on_value_error="Z is (B, M, D) and a (B, D): Z a is"
                         " `Z @ a[:, :, None]` (B, M, 1), ‖a‖² of each prompt"
                         " `numpy.sum(a * a, axis=-1)[:, None, None]` (B, 1, 1), and the"
                         " projector acts on Z from the right, as a matrix product (@);"
                         " numpy.outer flattens the batch: a aᵀ of each prompt is"
                         " `a[:, :, None] * a[:, None, :]` (B, D, D)")
    expected = null_space_perturbation(update, Z) - update.delta_W
    residual = check_array("Z_⊥", answer, expected, mistakes=null_space_mistakes(Z, a),
                           quiet=True)

    answer = numpy.asarray(answer, dtype=numpy.float64)
    annihilated = float(numpy.max(numpy.abs(answer @ a[:, :, None]))) / float(
        numpy.max(numpy.abs(Z)) * numpy.max(numpy.linalg.norm(a, axis=-1)))
    patch = BlockPatch(delta_W=update.delta_W + answer, delta_b=update.delta_b)
    patched, _ = forward(params, config, query[:, None, :], patches=(patch,))
    identity = relative_residual(patched[:, -1], with_context[:, -1])
    if not (annihilated <= IDENTITY_RTOL and identity <= IDENTITY_RTOL):
        raise ExerciseError(
            f"Z_⊥ matches the package's but Z_⊥ a = {annihilated:.1e} (relative) and the"
            f" patched forward misses by {identity:.1e}"
        )
    print(f"✓ Z_⊥ is right: against null_space_perturbation {residual:.1e}; Z_⊥ a = 0 to"
          f" {annihilated:.1e}; W + ΔW + Z_⊥ on the query alone reproduces T_W(C, x) to"
          f" {identity:.1e}")
    return identity
