"""Checks for tutorial 11: the patch of one position, and the thought patch.

1. Every position is a query (Innocenti & Achour 2025, arXiv:2512.11255). For position
   t of a prompt and one block, with u_t, h_t the MLP input and residual at t in the run
   of the whole prompt and u_∅,t, h_∅,t those of position t's input run alone,

       ΔW_t = W (u_t − u_∅,t) u_∅,tᵀ / ‖u_∅,t‖²,   Δb′_t = h_t − h_∅,t   (MLP skip).

   The reader writes ``position_patch(W, u_C, h_C, u_0, h_0, t)`` from the
   states of every position, (B, T, D). The check calls it for each block of a causal
   2-block pre-LN stack with both skips, compares with
   :func:`minimal_icl.positions.implicit_update_every_position` at t, and runs position
   t's token alone through the stack patched with the reader's answers:
   ``forward(tokens[:, t:t+1], patches=...)`` must give ``forward(tokens)[:, t]``.

2. One patch for all queries (docs/theory.md §7). With K calibration queries,
   a_k = u_∅(x_k) and u_k = W (u_C(x_k) − u_∅(x_k)), the minimum-norm least-squares fit
   of Δ a_k ≈ u_k is Δ* = U A⁺, U = [u_1 .. u_K] (M, K), A = [a_1 .. a_K] (D, K). The
   reader writes ``thought_delta(W, u_C, u_0)`` from u_C(x_k), u_∅(x_k) (B, K, D).
   The check compares with :func:`minimal_icl.thought.thought_patch` for K = 3 ≤ D and
   K = 7 > D on a one-block model without MLP skip, and for K = 3 (A of full column
   rank) runs each calibration query alone through the patched block: it must give
   T_W(C, x_k).

Reference: Dherin et al. (2025), arXiv:2507.16003, Theorem 2.2 (v1) and later versions;
Innocenti & Achour (2025), arXiv:2512.11255; docs/notation.md for the symbols.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy

from ..block import BlockPatch, block_forward
from ..config import TransformerConfig
from ..model import forward
from ..params import ModelParams, init_params
from ..positions import at_position, implicit_update_every_position
from ..thought import thought_patch
from ..tolerances import IDENTITY_RTOL, relative_residual
from . import ExerciseError, _as_host, _rank_one, call_answer, check_array

__all__ = [
    "PositionCase", "position_case", "check_position_patch",
    "ThoughtCase", "thought_case", "check_thought_delta",
]


# -- 1. the patch of one position --------------------------------------------------------


class BlockStates(NamedTuple):
    """One block's states at every position, (B, T, D) each."""

    W: numpy.ndarray  # (M, D)        the block's MLP first weight
    u_C: numpy.ndarray  # u_t:     MLP input at t, whole prompt
    h_C: numpy.ndarray  # h_t:     residual after attention at t, whole prompt
    u_0: numpy.ndarray  # u_∅,t:  MLP input, position t's input run alone
    h_0: numpy.ndarray  # h_∅,t


class PositionCase(NamedTuple):
    """A causal 2-block pre-LN stack with both skips, a prompt, a position t, the states."""

    config: TransformerConfig
    params: ModelParams
    tokens: numpy.ndarray  # (B, T, D)
    t: int
    blocks: tuple  # BlockStates per block
    expected: tuple  # the package's per-block patches at t (ImplicitUpdate, delta_W (B, M, D))


def position_case(seed: int = 0) -> PositionCase:
    """B = 4 random prompts of T = 6 tokens (D = 4), position t = 3, through a causal
    stack of two pre-LN blocks (2 heads, GELU MLP of width 8, both skips)."""
    config = TransformerConfig(d_token=4, n_blocks=2, n_heads=2, d_head=3, d_mlp=8,
                               activation="gelu", causal=True, attn_skip=True, mlp_skip=True,
                               layer_norm=True)
    params = init_params(config, seed=seed)
    tokens = numpy.random.default_rng(seed + 1).standard_normal((4, 6, 4))
    B, T, D = tokens.shape
    _, full = forward(params, config, tokens)
    blocks = []
    for l, block in enumerate(params.blocks):
        z = full.inputs[l]  # (B, T, D) block l's input, whole prompt
        _, alone = block_forward(z.reshape(B * T, 1, D), block, config)  # every position alone
        blocks.append(BlockStates(
            numpy.asarray(block.mlp.W1), full.blocks[l].u, full.blocks[l].h,
            alone.u.reshape(B, T, D), alone.h.reshape(B, T, D),
        ))
    t = 3
    expected = at_position(implicit_update_every_position(params, config, tokens), t)
    return PositionCase(config, params, tokens, t, tuple(blocks), expected)


def check_position_patch(position_patch: Callable, seed: int = 0) -> None:
    """Check ``position_patch(W, u_C, h_C, u_0, h_0, t) -> (delta_W, delta_b)``.

    Shapes: W (M, D); u_C, h_C, u_0, h_0 (B, T, D); t an int; returns
    delta_W (B, M, D) and delta_b (B, D), position t's patch of one block. Called once
    per block of the case's stack; then the patched stack on tokens[:, t:t+1] must give
    position t's output of the whole prompt. Raises ExerciseError naming the mistake.
    """
    case = position_case(seed)
    t = case.t
    patches = []
    for l, s in enumerate(case.blocks):
        answer = call_answer(position_patch, s.W.copy(), s.u_C.copy(), s.h_C.copy(),
                             s.u_0.copy(), s.h_0.copy(), t, name="position_patch",
                             on_value_error="the states are (B, T, D): take position"
                             " t first, u_C[:, t] is (B, D); W is (M, D), so the column"
                             " W δu_t of every prompt is `du @ W.T` (B, M)")
        if not isinstance(answer, (tuple, list)) or len(answer) != 2:
            raise ExerciseError("position_patch must return two arrays: (delta_W, delta_b)")
        delta_W, delta_b = answer
        T = s.u_C.shape[1]
        for label, value, ndim in (("ΔW_t", delta_W, 3), ("Δb′_t", delta_b, 2)):
            shape = _as_host(value, label).shape
            if len(shape) == ndim + 1 and shape[1] == T:
                raise ExerciseError(
                    f"{label} (block {l + 1}) has shape {shape}: one patch per position;"
                    f" return position t's only: index the (B, T, D) states at t first,"
                    f" u_C[:, t] is (B, D)")
        u_t, u_0, h_t = s.u_C[:, t], s.u_0[:, t], s.h_C[:, t]
        u_x, h_x = s.u_0[:, -1], s.h_0[:, -1]  # the last token alone
        column = (u_t - u_0) @ s.W.T  # (B, M)  W δu_t
        last = (s.u_C[:, -1] - u_x) @ s.W.T
        before = (s.u_C[:, t - 1] - s.u_0[:, t - 1]) @ s.W.T  # position t − 1's column
        after = (s.u_C[:, t + 1] - s.u_0[:, t + 1]) @ s.W.T  # position t + 1's column
        prompt_t = (s.u_C[t] - s.u_0[t]) @ s.W.T  # u_C[t]: prompt t, (T, M), not position t
        batch_norm = _rank_one(column, u_0, power=0) / numpy.sum(u_0 * u_0)  # one ‖·‖² for all
        name = f"ΔW_t (block {l + 1})"
        check_array(name, delta_W, case.expected[l].delta_W, mistakes=[
            ("the row is built from the with-context input u_t; it is position t's input"
             " run ALONE, u_∅,t/‖u_∅,t‖²", _rank_one(column, u_t)),
            ("the division by ‖u_∅,t‖² is missing: ΔW_t = W δu_t u_∅,tᵀ/‖u_∅,t‖²",
             _rank_one(column, u_0, power=0)),
            ("‖u_∅,t‖ is not squared: the row is u_∅,t/‖u_∅,t‖²", _rank_one(column, u_0, 1)),
            ("the column is W u_t; it is W times the CHANGE of the MLP input,"
             " W (u_t − u_∅,t)", _rank_one(u_t @ s.W.T, u_0)),
            ("that is the LAST position's patch (index −1); take position t of every array",
             _rank_one(last, u_x)),
            ("that is Innocenti & Achour's variant (the last token alone, u_x): here the"
             " lone token is position t's own, u_∅,t", _rank_one((u_t - u_x) @ s.W.T, u_x)),
            ("that is position t − 1's patch: t is a 0-based index into the T axis"
             " (position t is u_C[:, t])", _rank_one(before, s.u_0[:, t - 1])),
            ("that is position t + 1's patch: position t is u_C[:, t] (counted from 0, it"
             " holds token t + 1 of the prompt)", _rank_one(after, s.u_0[:, t + 1])),
            ("‖u_∅,t‖² is summed over the whole batch: each prompt divides by its own, a"
             " sum over the last axis only (`axis=-1`, one number per prompt)", batch_norm),
            ("u_C[t] indexes the first axis, the prompts: the states are (B, T, D), so"
             " position t of every prompt is u_C[:, t] (B, D)", _rank_one(prompt_t, s.u_0[t])),
            ("the row is built from h_∅,t, the residual stream; the patch multiplies the MLP"
             " input, so the row is u_∅,t/‖u_∅,t‖² (u = LN2(h) in these pre-LN blocks)",
             _rank_one(column, s.h_0[:, t])),
            ("the column is W (h_t − h_∅,t), the change of the residual stream; W acts on the"
             " MLP input, so the column is W (u_t − u_∅,t) (u = LN2(h) in these pre-LN"
             " blocks)", _rank_one((h_t - s.h_0[:, t]) @ s.W.T, u_0)),
        ])
        check_array(f"Δb′_t (block {l + 1})", delta_b, case.expected[l].delta_b, mistakes=[
            ("Δb′_t is zero: the MLP skip carries h past the MLP, so the output must also"
             " gain h_t − h_∅,t", numpy.zeros_like(h_t)),
            ("Δb′_t is h_t; it is the change of the residual stream, h_t − h_∅,t", h_t),
            ("that is the LAST position's Δb′ (index −1); take position t",
             s.h_C[:, -1] - h_x),
            ("that is Innocenti & Achour's variant, h_t − h_x; here the lone token is"
             " position t's own: h_t − h_∅,t", h_t - h_x),
            ("that is position t − 1's Δb′: t is a 0-based index into the T axis",
             s.h_C[:, t - 1] - s.h_0[:, t - 1]),
            ("that is position t + 1's Δb′: position t is h_C[:, t] (counted from 0)",
             s.h_C[:, t + 1] - s.h_0[:, t + 1]),
            ("h_C[t] indexes the first axis, the prompts: the states are (B, T, D), so"
             " position t of every prompt is h_C[:, t] (B, D)", s.h_C[t] - s.h_0[t]),
            ("Δb′_t is u_t − u_∅,t, the change of the MLP input; the output bias takes the"
             " change of the residual stream, h_t − h_∅,t", u_t - u_0),
        ])
        patches.append(BlockPatch(_as_host(delta_W, name), _as_host(delta_b, "Δb′_t")))

    full, _ = forward(case.params, case.config, case.tokens)
    patched, _ = forward(case.params, case.config, case.tokens[:, t:t + 1],
                         patches=tuple(patches))
    residual = relative_residual(patched[:, 0], full[:, t])
    if residual > IDENTITY_RTOL:
        raise ExerciseError(
            f"position t's token alone, patched, misses its output in the prompt by {residual:.2e}"
        )
    print(f"✓ forward(tokens[:, t:t+1], patches) = forward(tokens)[:, t] for t = {t}, both"
          f" blocks: residual {residual:.1e} ≤ {IDENTITY_RTOL:.0e}")


# -- 2. the thought patch ----------------------------------------------------------------


class ThoughtCase(NamedTuple):
    """A one-block model (attention skip, no MLP skip), contexts, calibration queries."""

    config: TransformerConfig
    params: ModelParams
    context: numpy.ndarray  # (B, N, D)
    queries: numpy.ndarray  # (B, K_max, D) generic calibration queries


def thought_case(seed: int = 0) -> ThoughtCase:
    """B = 3 contexts of N = 6 random tokens (D = 4) and 7 random calibration queries
    each, for a GELU block with an attention skip and no MLP skip (Δb′* = 0)."""
    config = TransformerConfig(d_token=4, n_blocks=1, n_heads=2, d_head=3, d_mlp=8,
                               activation="gelu", attn_skip=True, mlp_skip=False)
    params = init_params(config, seed=seed)
    rng = numpy.random.default_rng(seed + 1)
    return ThoughtCase(config, params, rng.standard_normal((3, 6, 4)),
                       rng.standard_normal((3, 7, 4)))


def _states(case: ThoughtCase, K: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """u_C(x_k), u_∅(x_k) (B, K, D) and T_W(C, x_k) (B, K, D) for the first K queries."""
    B, N, D = case.context.shape
    queries = case.queries[:, :K]
    prompts = numpy.concatenate(
        [numpy.repeat(case.context, K, axis=0), queries.reshape(B * K, 1, D)], axis=1)
    out, full = forward(case.params, case.config, prompts)
    _, alone = forward(case.params, case.config, queries.reshape(B * K, 1, D))
    return (full.blocks[0].u[:, -1].reshape(B, K, D), alone.blocks[0].u[:, 0].reshape(B, K, D),
            out[:, -1].reshape(B, K, D))


def check_thought_delta(thought_delta: Callable, seed: int = 0) -> None:
    """Check ``thought_delta(W, u_C, u_0) -> delta_W``: Δ* = U A⁺.

    Shapes: W (M, D); u_C = u_C(x_k), u_0 = u_∅(x_k) (B, K, D); delta_W (B, M, D).
    Compared with ``thought_patch`` for K = 3 and K = 7 (D = 4); for K = 3 each
    calibration query alone through the patched block must give T_W(C, x_k).
    Raises ExerciseError naming the mistake.
    """
    case = thought_case(seed)
    W = numpy.asarray(case.params.blocks[0].mlp.W1)
    for K in (3, 7):
        u_C, u_0, out_C = _states(case, K)
        try:
            answer = call_answer(thought_delta, W.copy(), u_C.copy(), u_0.copy(),
                                 name="thought_delta",
                                 on_value_error="u_C and u_0 are (B, K, D): U ="
                                 " [u_1 .. u_K] is (B, M, K), and A = [a_1 .. a_K] is u_0"
                                 " with its last two axes swapped, (B, D, K), so"
                                 " numpy.linalg.pinv(A) is (B, K, D)")
        except ExerciseError as error:
            if not isinstance(error.__cause__, numpy.linalg.LinAlgError):
                raise
            raise ExerciseError(
                f"thought_delta raised LinAlgError ({error.__cause__}) for K = {K}, D ="
                f" {case.config.d_token}: A Aᵀ (D × D) is singular when K < D, and AᵀA"
                " (K × K) when K > D, so neither Aᵀ(AAᵀ)⁻¹ nor (AᵀA)⁻¹Aᵀ is A⁺ for every K:"
                " use numpy.linalg.pinv(A)") from error.__cause__
        expected = thought_patch(case.params, case.config, case.context,
                                 case.queries[:, :K]).delta_W
        U = ((u_C - u_0) @ W.T).mT  # (B, M, K)
        A = u_0.mT  # (B, D, K)
        per_query = U[:, :, :, None] * (u_0 / numpy.sum(u_0**2, -1, keepdims=True))[:, None]
        mistakes = [
            ("that is the SUM of the K per-query patches W δu_k a_kᵀ/‖a_k‖²; they do not add"
             " up to a fit: Δ* = U A⁺ with the pseudo-inverse of A = [a_1 .. a_K]",
             per_query.sum(-2)),
            ("that is the MEAN of the K per-query patches; the least-squares fit is U A⁺,"
             " with the pseudo-inverse of A = [a_1 .. a_K]", per_query.mean(-2)),
            ("you used Aᵀ where the pseudo-inverse A⁺ goes: Δ* = U A⁺, not U Aᵀ",
             U @ A.mT),
            ("U holds W u_C(x_k); it holds what the patch must ADD, u_k = W (u_C − u_∅)",
             (u_C @ W.T).mT @ numpy.linalg.pinv(A)),
            ("U is missing W: u_k = W (u_C(x_k) − u_∅(x_k)) lives in ℝ^M, the MLP's hidden"
             " width, so U = `((u_C - u_0) @ W.T).mT` is (B, M, K)",
             (u_C - u_0).mT @ numpy.linalg.pinv(A)),
            ("A is built from the with-context inputs u_C(x_k); the patch acts on the query"
             " alone: a_k = u_∅(x_k)", U @ numpy.linalg.pinv(u_C.mT)),
        ]
        try:
            check_array(f"Δ* (K = {K})", answer, expected, mistakes=mistakes)
        except ExerciseError as error:
            if K <= case.config.d_token:
                raise
            # right where A has full column rank, wrong beyond: (AᵀA)⁻¹Aᵀ, or an inverse
            raise ExerciseError(
                f"{error}. Your answer was right for K = 3 ≤ D: for K = {K} > D = "
                f"{case.config.d_token} the K × K matrix AᵀA is singular (rank ≤ D), so"
                " (AᵀA)⁻¹Aᵀ is not A⁺ there: use numpy.linalg.pinv(A)") from None
        if K <= case.config.d_token:
            B, _, D = u_0.shape
            delta_W = numpy.repeat(_as_host(answer, "Δ*"), K, axis=0)  # one per query
            patch = BlockPatch(delta_W, numpy.zeros((B * K, D)))
            alone, _ = forward(case.params, case.config, case.queries[:, :K].reshape(B * K, 1, D),
                               patches=(patch,))
            residual = relative_residual(alone[:, 0].reshape(B, K, D), out_C)
            if residual > IDENTITY_RTOL:
                raise ExerciseError(
                    f"with K = {K} ≤ D the patched block should reproduce every calibration"
                    f" query; it misses by {residual:.2e}")
            print(f"✓ K = {K} ≤ D: T_(W+Δ*)(x_k) = T_W(C, x_k) for every calibration query:"
                  f" residual {residual:.1e} ≤ {IDENTITY_RTOL:.0e}")
