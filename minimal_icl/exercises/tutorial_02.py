"""Checks for tutorial 02 (context as a weight update): ΔW from two forward caches.

The reader writes the corollary of Theorem 2.2 (Dherin et al. 2025, arXiv:2507.16003,
Theorem 2.2 in v1, Y = C),

    ΔW = (W ΔA) A(x)ᵀ / ‖A(x)‖²,   ΔA = A(C, x) − A(x),

as ``delta_W_from_caches(W, cache_with, cache_alone) -> (B, M, D)``, where
``cache_with`` is the forward cache of the whole prompt [C, x] and ``cache_alone`` that
of the query alone [x]. ``check_delta_W`` compares the answer with the package's
``implicit_update`` and runs the patched forward, ``forward(x, patches=...)``, which must
reproduce the with-context output at the query. Hints name the typical mistakes: no
division by ‖A(x)‖², a division by ‖A(x)‖, the transposed factor A(x) ⊗ W ΔA, the sign
of ΔA, A(C, x), ΔA or A(x)/‖A(C, x)‖² as the row, W A(C, x) or W A(x) as the column,
one ‖A(x)‖² for the whole batch or one per coordinate (axis=0), W + ΔW, the column ΔA
without W, the row 1/A(x) (no sum of squares), a division by ‖A(x)‖⁴ and the mean of the
squares for ‖A(x)‖².
"""

from __future__ import annotations

from typing import Callable

import numpy

from ..block import BlockPatch
from ..config import TransformerConfig
from ..implicit import implicit_update, outer  # outer: column ⊗ row per prompt
from ..model import forward
from ..params import ModelParams
from ..tolerances import IDENTITY_RTOL, relative_residual
from ..validation import check_config, check_positive_int, check_seed
from . import ExerciseError, call_answer, check_array

__all__ = ["check_delta_W", "delta_W_mistakes"]


def delta_W_mistakes(W, A_with, A_alone) -> list[tuple[str, numpy.ndarray]]:
    """The typical wrong updates for W (M, D), A(C, x) and A(x) (B, D), with their hints."""
    W, A_C, A_x = (numpy.asarray(v, dtype=numpy.float64) for v in (W, A_with, A_alone))
    delta_A = A_C - A_x  # (B, D)  ΔA
    column = delta_A @ W.T  # (B, M)  W ΔA
    norm = numpy.linalg.norm(A_x, axis=-1, keepdims=True)  # (B, 1)  ‖A(x)‖
    norm_C = numpy.linalg.norm(A_C, axis=-1, keepdims=True)
    delta_norm = numpy.linalg.norm(delta_A, axis=-1, keepdims=True)
    return [
        ("the division by ‖A(x)‖² is missing: the row is A(x)ᵀ/‖A(x)‖², so that"
         " ΔW A(x) = W ΔA (aᵀa/‖a‖² = 1)", outer(column, A_x)),
        ("you divided by ‖A(x)‖ instead of ‖A(x)‖²: ΔW A(x) must equal W ΔA, and"
         " aᵀa/‖a‖ = ‖a‖ ≠ 1", outer(column, A_x / norm)),
        ("the sign of ΔA is flipped: ΔA = A(C, x) − A(x), the with-context output minus"
         " the query alone", outer(-column, A_x / norm**2)),
        ("the row is A(C, x)ᵀ/‖A(C, x)‖², but the patched block runs on the query alone:"
         " ΔW must act on A(x), so the row is A(x)ᵀ/‖A(x)‖²", outer(column, A_C / norm_C**2)),
        ("‖A(x)‖² is summed over every prompt at once: each prompt has its own A(x), so"
         " sum the squares over the last axis only (axis=-1, keepdims=True)",
         outer(column, A_x / numpy.sum(A_x * A_x))),
        ("that is the patched weight W + ΔW: return the update ΔW alone",
         W + outer(column, A_x / norm**2)),
        ("the column is W A(C, x); it is W times the change ΔA = A(C, x) − A(x)",
         outer(A_C @ W.T, A_x / norm**2)),
        ("the column is W A(x); it is W times the change the context makes,"
         " ΔA = A(C, x) − A(x)", outer(A_x @ W.T, A_x / norm**2)),
        ("‖A(x)‖² is summed over the prompts (axis=0), one sum per coordinate: each"
         " prompt's ‖A(x)‖² sums its own D squares, axis=-1 (keepdims=True)",
         outer(column, A_x / numpy.sum(A_x * A_x, axis=0, keepdims=True))),
        ("the row is ΔA/‖ΔA‖²; the row is the input the patched W receives, the query"
         " alone's A(x): A(x)ᵀ/‖A(x)‖²", outer(column, delta_A / delta_norm**2)),
        ("the row divides A(x) by ‖A(C, x)‖²; both come from the query alone:"
         " A(x)ᵀ/‖A(x)‖²", outer(column, A_x / norm_C**2)),
        ("the column is ΔA itself; it is W ΔA (`delta_A @ W.T`, shape (B, M)), what the"
         " patched W must add to W A(x)", outer(delta_A, A_x / norm**2)),
        ("the row is A(x)/A(x)**2 entry by entry (1/A(x)); ‖A(x)‖² is one number per"
         " prompt, the sum of its D squares: numpy.sum(A_x**2, axis=-1, keepdims=True)",
         outer(column, 1.0 / A_x)),
        ("you divided by ‖A(x)‖⁴ (the squared norm squared again): the row is"
         " A(x)ᵀ/‖A(x)‖², numpy.sum(A_x**2, ...) is already ‖A(x)‖²",
         outer(column, A_x / norm**4)),
        ("‖A(x)‖² is the sum of the D squares, not their mean: numpy.sum, not"
         " numpy.mean", outer(column, A_x / numpy.mean(A_x * A_x, axis=-1, keepdims=True))),
    ]


def check_delta_W(
    delta_W_from_caches: Callable,
    params: ModelParams,
    config: TransformerConfig,
    n_prompts: int = 16,
    n_context: int = 10,
    seed: int = 0,
) -> float:
    """Check ``delta_W_from_caches(W, cache_with, cache_alone) -> ΔW (B, M, D)``.

    Draws fresh prompts (standard normal tokens: n_prompts prompts of n_context context
    tokens and a query), runs ``forward`` on [C, x] and on [x] (``last_only=True``),
    calls the reader's function with the first block's W and the two caches, then

    1. compares the answer with ``implicit_update(...)[0].delta_W`` (relative residual
       ≤ IDENTITY_RTOL), with a hint for each typical mistake;
    2. runs the query alone through the block patched with the answer and compares its
       output with the with-context output at the query (≤ IDENTITY_RTOL).

    One-block models only (the exercise patches the first block). Returns the residual
    of the patched forward. Raises ExerciseError with a hint.
    """
    check_config(config)
    n_prompts = check_positive_int("n_prompts", n_prompts)
    n_context = check_positive_int("n_context", n_context)
    seed = check_seed(seed)
    if config.n_blocks != 1:
        raise ValueError(
            f"check_delta_W: expected a one-block model, config has {config.n_blocks} blocks"
        )
    rng = numpy.random.default_rng(seed)
    tokens = rng.standard_normal((n_prompts, n_context + 1, config.d_token))  # [C, x]
    context, query = tokens[:, :-1], tokens[:, -1]
    query_alone = tokens[:, -1:]  # (B, 1, D)
    with_context, cache_with = forward(params, config, tokens, last_only=True)
    _, cache_alone = forward(params, config, query_alone, last_only=True)
    W = params.blocks[0].mlp.W1
    (update,) = implicit_update(params, config, context, query)

    label = getattr(delta_W_from_caches, "__name__", "your function")
    answer = call_answer(delta_W_from_caches, W, cache_with, cache_alone, name=label,
                         on_value_error="W is (M, D) and A (B, D): the column W ΔA of every"
                         " prompt is `delta_A @ W.T` (B, M), and each ‖A(x)‖² keeps its axis,"
                         " `numpy.sum(A_x**2, axis=-1, keepdims=True)` (B, 1)")
    A_with = cache_with.blocks[0].u[:, -1]  # the MLP input at the query (A(C, x) here)
    A_alone = cache_alone.blocks[0].u[:, -1]
    residual = check_array("ΔW", answer, update.delta_W,
                           mistakes=delta_W_mistakes(W, A_with, A_alone), quiet=True)

    answer = numpy.asarray(answer, dtype=numpy.float64)
    patch = BlockPatch(delta_W=answer, delta_b=update.delta_b)
    patched, _ = forward(params, config, query_alone, patches=(patch,))
    identity = relative_residual(patched[:, -1], with_context[:, -1])
    if not identity <= IDENTITY_RTOL:
        raise ExerciseError(
            f"ΔW matches implicit_update but the patched forward misses the with-context"
            f" output by {identity:.1e} > {IDENTITY_RTOL:.0e}"
        )
    print(f"✓ ΔW is right: against implicit_update {residual:.1e}; the query alone through"
          f" W + ΔW reproduces T_W(C, x) to {identity:.1e} (≤ {IDENTITY_RTOL:.0e})")
    return identity
