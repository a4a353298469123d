"""Checks for tutorial 04: the patch of a block with both skip connections.

The block the package runs with ``attn_skip=True, mlp_skip=True`` and no LayerNorm is

    h = x + A(C, x),   out = h + W′ g(W h + b) + b′,

so its MLP reads h, not A(C, x) (the paper's skip form, appendix of v1, feeds A(C, x) to
the MLP). With the query alone, h_∅ = x + A(x), and Theorem 2.2 applied at the MLP
input gives, with ΔA = A(C, x) − A(x),

    ΔW  = W (h_C − h_∅) h_∅ᵀ / ‖h_∅‖² = W ΔA (x + A(x))ᵀ / ‖x + A(x)‖²,
    Δb′ = h_C − h_∅ = A(C, x) − A(x) = ΔA.

The reader writes both; the check compares them with
:func:`minimal_icl.implicit.implicit_update` on a fresh random block and then runs the
query alone through the block patched with the reader's answer
(``forward(..., patches=...)``), which must give the with-context output at the query.
Reference: Dherin et al. (2025), arXiv:2507.16003, Theorem 2.2 and its skip-connection
form (v1); docs/notation.md for the symbols.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy

from ..block import BlockPatch
from ..config import TransformerConfig
from ..data import regression_prompts
from ..implicit import ImplicitUpdate, implicit_update
from ..model import forward
from ..params import ModelParams, init_params
from ..tolerances import IDENTITY_RTOL, relative_residual
from . import ExerciseError, _as_host, _rank_one, call_answer, check_array

__all__ = ["SkipPatchCase", "skip_patch_case", "check_skip_patch"]


class SkipPatchCase(NamedTuple):
    """A skip block (no LayerNorm), B prompts, and the package's patch for Y = C."""

    config: TransformerConfig
    params: ModelParams
    tokens: numpy.ndarray  # (B, N+1, D)  [C, x]
    W: numpy.ndarray  # (M, D)           the MLP's first weight
    x: numpy.ndarray  # (B, D)           the query token
    A_with: numpy.ndarray  # (B, D)      A(C, x)
    A_without: numpy.ndarray  # (B, D)   A(x), the query alone
    update: ImplicitUpdate  # the package's ΔW, Δb′


def skip_patch_case(seed: int = 0) -> SkipPatchCase:
    """A random softmax block with both skips (2 heads, M = 16) on 6 regression prompts
    of 8 context pairs; A(C, x) and A(x) read from the engine's own forward caches."""
    config = TransformerConfig(d_token=3, n_blocks=1, n_heads=2, d_head=4, d_mlp=16,
                               attn_skip=True, mlp_skip=True)
    params = init_params(config, seed=seed)
    batch = regression_prompts(6, n_context=8, d=2, seed=seed + 1)
    _, with_context = forward(params, config, batch.tokens)
    _, alone = forward(params, config, batch.query[:, None, :])
    (update,) = implicit_update(params, config, batch.context, batch.query)
    return SkipPatchCase(
        config, params, numpy.asarray(batch.tokens), numpy.asarray(params.blocks[0].mlp.W1),
        numpy.asarray(batch.query), numpy.asarray(with_context.blocks[0].A[:, -1]),
        numpy.asarray(alone.blocks[0].A[:, -1]), update,
    )


def check_skip_patch(skip_patch: Callable, seed: int = 0) -> None:
    """Check ``skip_patch(W, x, A_with, A_without) -> (delta_W, delta_b)``.

    Shapes: W (M, D), x, A_with = A(C, x), A_without = A(x) (B, D); delta_W (B, M, D),
    delta_b (B, D). Expected: the package's ``implicit_update`` for Y = C on the skip
    block; then the query alone, patched with the answer, must reproduce the
    with-context output at the query to IDENTITY_RTOL.
    Raises ExerciseError with a hint naming the mistake.
    """
    case = skip_patch_case(seed)
    answer = call_answer(skip_patch, case.W.copy(), case.x.copy(), case.A_with.copy(),
                         case.A_without.copy(), name="skip_patch",
                         on_value_error="W is (M, D) and x, A (B, D): the column W ΔA of"
                         " every prompt is `(A_with - A_without) @ W.T` (B, M), and each"
                         " ‖x + A(x)‖² keeps its axis, `numpy.sum(a**2, axis=-1,"
                         " keepdims=True)` (B, 1)")
    if not isinstance(answer, (tuple, list)) or len(answer) != 2:
        raise ExerciseError("skip_patch must return two arrays: (delta_W, delta_b)")
    delta_W, delta_b = answer
    M, D = case.W.shape
    if numpy.ndim(delta_W) == 2 and numpy.ndim(delta_b) == 3:
        raise ExerciseError("skip_patch returned (delta_b, delta_W): return (delta_W, delta_b),"
                            f" ΔW (B, {M}, {D}) first")

    W, x, A_C, A_0 = case.W, case.x, case.A_with, case.A_without
    h_C, h_0 = x + A_C, x + A_0  # the MLP inputs with and without the context
    column = (A_C - A_0) @ W.T  # (B, M)  W ΔA
    check_array("ΔW", delta_W, numpy.asarray(case.update.delta_W), mistakes=[
        ("the row is A(x)/‖A(x)‖², the paper's skip form; in this block the MLP reads"
         " h = x + A, so the row is (x + A(x))/‖x + A(x)‖²", _rank_one(column, A_0)),
        ("the division by ‖a‖² is missing: ΔW = W ΔA aᵀ/‖a‖² with a = x + A(x)",
         _rank_one(column, h_0, power=0)),
        ("‖a‖ is not squared: the row is a/‖a‖², a = x + A(x)", _rank_one(column, h_0, 1)),
        ("‖a‖² is summed over every prompt at once: each prompt has its own a = x + A(x), so"
         " sum the squares over the last axis only (axis=-1, keepdims=True)",
         column[:, :, None] * (h_0 / numpy.sum(h_0 * h_0))[:, None, :]),
        ("the row is built from the with-context input x + A(C, x); it is the MLP input"
         " WITHOUT the context, a = x + A(x)", _rank_one(column, h_C)),
        ("the column is W (x + A(C, x)); it is W times the CHANGE of the MLP input,"
         " W (h_C − h_∅) = W ΔA (x cancels)", _rank_one(h_C @ W.T, h_0)),
        ("the column is W A(C, x); subtract A(x): the column is W ΔA = W (A(C, x) − A(x))",
         _rank_one(A_C @ W.T, h_0)),
        ("the column is W (x + A(x)), the MLP input without the context; it is W times"
         " the change the context makes, W ΔA = W (A(C, x) − A(x))", _rank_one(h_0 @ W.T, h_0)),
        ("‖a‖² is summed over the prompts (axis=0), one sum per coordinate: each prompt's"
         " ‖x + A(x)‖² sums its own D squares, axis=-1 (keepdims=True)",
         column[:, :, None] * (h_0 / numpy.sum(h_0 * h_0, axis=0, keepdims=True))[:, None, :]),
        ("the column is W (x + A(C, x) − A(x)), the with-context input h_C minus A(x)"
         " alone; the input without the context carries the skip's x too, h_∅ = x + A(x),"
         " so x cancels: the column is W (h_C − h_∅) = W ΔA",
         _rank_one((x + A_C - A_0) @ W.T, h_0)),
        ("that is the patched weight W + ΔW: return the update ΔW alone",
         W + _rank_one(column, h_0)),
        ("the row is built from x alone: it is the whole MLP input without the context,"
         " a = x + A(x), not the skip's x", _rank_one(column, x)),
        ("the column and the row are swapped: the column is W times the change ΔA, the row"
         " the MLP input without context, (x + A(x))/‖x + A(x)‖²",
         _rank_one(h_0 @ W.T, A_C - A_0)),
    ])
    check_array("Δb′", delta_b, numpy.asarray(case.update.delta_b), mistakes=[
        ("Δb′ is zero: the MLP skip carries h past the MLP, so the output must also gain"
         " h_C − h_∅ = ΔA", numpy.zeros_like(A_C)),
        ("Δb′ is h_C = x + A(C, x); it is the change of the residual stream, h_C − h_∅",
         h_C),
        ("Δb′ is h_∅ = x + A(x), the residual stream without the context; it is the"
         " change h_C − h_∅ = ΔA", h_0),
        ("Δb′ is A(C, x); subtract A(x): Δb′ = A(C, x) − A(x) = ΔA", A_C),
        ("Δb′ is x + ΔA, h_C minus A(x) alone; the residual stream without the context"
         " carries the skip's x too, h_∅ = x + A(x), so x cancels: Δb′ = h_C − h_∅ = ΔA",
         x + A_C - A_0),
        (f"Δb′ is the column W ΔA, of width M = {M}; Δb′ is added to the MLP's output bias"
         f" b′, after W′, so it lives in ℝ^D (D = {D}): the change of the residual stream"
         " itself, Δb′ = h_C − h_∅ = ΔA, with no W", column),
        ("Δb′ is the query token x; x is the same with and without the context, so it"
         " cancels: Δb′ = h_C − h_∅ = ΔA", x),
    ])

    patch = BlockPatch(_as_host(delta_W, "ΔW"), _as_host(delta_b, "Δb′"))
    full, _ = forward(case.params, case.config, case.tokens)
    patched, _ = forward(case.params, case.config, case.tokens[:, -1:, :], patches=(patch,))
    residual = relative_residual(patched[:, -1], full[:, -1])
    if residual > IDENTITY_RTOL:
        raise ExerciseError(
            f"the patched query alone misses the with-context output by {residual:.2e}"
        )
    print(f"✓ T_(W+ΔW, b′+Δb′)(x) = T_(W, b′)(C, x): residual {residual:.1e} ≤ {IDENTITY_RTOL:.0e}")
