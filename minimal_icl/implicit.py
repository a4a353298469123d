"""Theorem 2.2 (Dherin et al. 2025, v1): the context of a prompt is a rank-1 update of W.

A contextual block T_W = M_W ∘ A reads its output at the query x. Removing a set Y of
context tokens from the prompt and adding the rank-1 matrix

    ΔW(Y) = (W δA_x(Y)) A(C\\Y, x)ᵀ / ‖A(C\\Y, x)‖²,   δA_x(Y) = A(C, x) − A(C\\Y, x),

to the first weight W of the MLP gives the same output at the query:

    T_W(C, x) = T_{W+ΔW(Y)}(C\\Y, x).

Proof: with a = A(C\\Y, x) and δ = δA_x(Y), (W + ΔW) a = W a + W δ (aᵀa)/‖a‖² = W (a + δ)
= W A(C, x), so the MLP sees the same pre-activation.

In this package's block the patch sits at the MLP input u (docs/theory.md §3):

    u = LN2(h) with layer_norm,  h = z + A with attn_skip (else h = A),  u = h otherwise;
    ΔW = W1 (u_C − u_∅) u_∅ᵀ / ‖u_∅‖²,   Δb′ = h_C − h_∅ added to b2 when mlp_skip,

where the subscripts C and ∅ mean the query's state with the whole prompt and with the
removed tokens left out. u_C, h_C, u_∅, h_∅ come from the engine's own ``block_forward``.

Stacks of blocks (docs/theory.md §3), sequentially: run the reduced prompt [C\\Y, x]
through the stack one block at a time; block l's u_∅, h_∅ come from block l run on the
patched outputs of blocks 1..l − 1 on the reduced prompt, its u_C, h_C from the run on
the whole prompt, and its patch acts at every position of the reduced prompt. By
induction the query's state after every block equals the with-context one, for any
Y ⊆ C (for Y = C the reduced prompt is the query alone).

Shapes: B prompts, N context tokens, D token width, M MLP width.
Reference: Dherin et al. (2025), arXiv:2507.16003, Theorem 2.2 in v1 and its appendix.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy

from .attention import merge_heads, split_heads
from .backend import Array, device, namespace
from .block import BlockPatch, block_forward
from .config import TransformerConfig
from .linear import linear_forward
from .params import AttentionParams, ModelParams
from .validation import (
    check_context_query,
    check_linear_attention_inputs,
    check_minimum_norm_inputs,
    check_null_space_inputs,
    check_forward_finite,
    check_result_finite,
    check_params,
    check_prompt,
    check_tokens,
    quiet_checked_pass,
    removed_positions,
)


class DegenerateQueryError(ValueError):
    """The implicit update divides by ‖A(C\\Y, x)‖², and for some prompts it is zero.

    Attributes:
        prompts: the indices of the prompts (in the batch) whose vector is zero.
        block:   the block whose MLP input is zero.

    Theorem 2.2 assumes A(C\\Y, x) ≠ 0: no matrix X maps a = 0 to W δ ≠ 0, so no
    update of W exists in general. There is no epsilon to fall back on.
    """

    def __init__(self, prompts: Sequence[int], block: int, vector: str = "A(C\\Y, x)"):
        self.prompts = tuple(int(i) for i in prompts)
        self.block = int(block)
        super().__init__(
            f"implicit update undefined for prompt(s) {list(self.prompts)} at block {self.block}:"
            f" the MLP input at the query without the removed tokens, u_∅ = {vector}, is the zero"
            f" vector, and ΔW = W δu u_∅ᵀ / ‖u_∅‖² divides"
            f" by ‖u_∅‖² (Theorem 2.2 assumes it is non-zero). Use a query whose MLP input is"
            f" non-zero: one whose attention output is non-zero (for the query alone and"
            f" softmax attention A(x) = W_O W_V x, or W_O W_V LN1(x) after a pre-LayerNorm:"
            f" a token outside the null space of W_O W_V), or, with an attention skip"
            f" (h = x + A(x)), a non-zero query token with A(x) ≠ −x; a LayerNorm with a non-zero bias also helps. Or leave more"
            f" tokens in the context."
        )


class ImplicitUpdate(NamedTuple):
    """The rank-1 update of one block's MLP for a batch of prompts (Theorem 2.2).

    Usable directly as that block's entry in ``forward(..., patches=...)``.
    """

    delta_W: Array  # (B, M, D)  ΔW = column ⊗ row, added to W1
    delta_b: Array  # (B, D)     Δb′ = h_C − h_∅, added to b2 (zeros without an MLP skip)
    column: Array  # (B, M)      W1 δu, the left factor
    row: Array  # (B, D)         u_∅ / ‖u_∅‖², the right factor
    delta_u: Array  # (B, D)     δu = u_C − u_∅: the context vector δA_x(Y) at the MLP input
    u_without: Array  # (B, D)   u_∅ = A(C\Y, x) at the MLP input


# -- the pieces of the theorem ---------------------------------------------------------


def remove_tokens(context: Array, query: Array, removed=None) -> Array:
    """The prompt without the tokens Y: C\\Y in its order, then the query.

    context (B, N, D), query (B, D), removed: None (Y = C) or a sequence of positions.
    Returns tokens (B, N − |Y| + 1, D).
    """
    check_context_query(context, query)
    xp = namespace(context, query)
    B, N, D = context.shape
    Y = set(removed_positions(removed, N))
    keep = [j for j in range(N) if j not in Y]
    query_token = xp.reshape(query, (B, 1, D))
    if not keep:
        return query_token
    if len(keep) == N:
        return xp.concat([context, query_token], axis=1)
    index = xp.asarray(keep, dtype=xp.int64, device=device(context))
    return xp.concat([xp.take(context, index, axis=1), query_token], axis=1)  # (B, N−|Y|+1, D)


def norms(a: Array) -> Array:
    """‖a‖ over the last axis: a (..., n) -> (...,).

    The plain form √(a · a), one fused dot product per vector (``vecdot``: no a ⊙ a
    array), wherever a · a is a normal number; a · a that overflows to inf, or underflows
    to a subnormal number or 0 (tokens of 1e-300 give 1e-600), sends the whole array to
    the scaled form s ‖a/s‖ with s = max |a|, which squares numbers of size at most 1
    (in float32 a · a overflows once ‖a‖ > 1.8e19; activations of a stack without
    LayerNorm grow geometrically with depth: after 64 random softmax blocks with both
    skips the largest entry is 1e9 to 3e15 for D = 3 to 16, over seeds 0–2). One check
    on the (...,) squares
    chooses; where a · a ≥ the smallest normal number the plain form's rounding is that of
    normal numbers (a square that underflows inside the sum is off by at most half its
    spacing, 2⁻¹⁰⁷⁵ in float64, against a sum of at least 2⁻¹⁰²²).
    """
    xp = namespace(a)
    with quiet_checked_pass(True):  # an overflow here is checked for just below
        squares = xp.vecdot(a, a, axis=-1)  # (...,)  a · a
    info = xp.finfo(a.dtype)
    if bool(xp.all((squares >= info.smallest_normal) & (squares <= info.max))):
        return xp.sqrt(squares)
    return scaled_norms(a)


def scaled_norms(a: Array) -> Array:
    """‖a‖ over the last axis as s ‖a/s‖, s = max |a| (0 where a = 0): no square
    overflows or underflows to 0 unless ‖a‖ itself does. a (..., n) -> (...,)."""
    xp = namespace(a)
    s = xp.max(xp.abs(a), axis=-1, keepdims=True)  # (..., 1)
    scaled = a / xp.where(s == 0, xp.ones_like(s), s)
    return s[..., 0] * xp.sqrt(xp.vecdot(scaled, scaled, axis=-1))


def check_nonzero(norm: Array, block: int, vector: str = "A(C\\Y, x)") -> None:
    """Raise DegenerateQueryError for the prompts whose ‖a‖ (B,) is exactly 0 (a = 0)."""
    xp = namespace(norm)
    zero = norm == 0
    if bool(xp.any(zero)):
        flat = xp.reshape(zero, (-1,))
        raise DegenerateQueryError(
            [i for i in range(flat.shape[0]) if bool(flat[i])], block, vector
        )


def inverse_direction(a: Array, block: int = 0, vector: str = "A(C\\Y, x)") -> Array:
    """a / ‖a‖² over the last axis, as (a/‖a‖)/‖a‖ (no squared norm to overflow).

    Raises DegenerateQueryError where a = 0, and a ValueError where ‖a‖ is so small that
    a/‖a‖² overflows the dtype.
    """
    xp = namespace(a)
    norm = xp.expand_dims(norms(a), axis=-1)  # (..., 1)
    check_nonzero(norm[..., 0], block, vector)
    with numpy.errstate(over="ignore"):  # NumPy's flag only: the ValueError says it
        row = (a / norm) / norm
    if not bool(xp.all(xp.isfinite(row))):
        raise ValueError(
            f"block {block}: ‖{vector}‖ is non-zero but so small that {vector}/‖{vector}‖²"
            f" overflows {a.dtype}; rescale the tokens or use float64"
        )
    return row


def outer(column: Array, row: Array) -> Array:
    """column ⊗ row over the last axis: (..., M) and (..., D) -> (..., M, D)."""
    xp = namespace(column, row)
    return xp.expand_dims(column, axis=-1) * xp.expand_dims(row, axis=-2)


def rank_one_update(
    W: Array, delta: Array, a: Array, block: int = 0, vector: str = "A(C\\Y, x)"
) -> tuple[Array, Array, Array]:
    """ΔW = (W δ) aᵀ / ‖a‖², the rank-1 update of Theorem 2.2 (v1), for every prompt.

    The one place in the package where this formula is computed: ``implicit_update``
    (δ = δu = u_C − u_∅, a = u_∅), the path of Proposition 3.1 (δ = A_i − A(x),
    a = A(x)), each step of the factorised path (W = W_{i−1}, δ = ΔA(c_i), a = A_{>i})
    and the per-position updates of ``positions`` (one δ and a per position) call it.
    It solves X a = W δ with minimum Frobenius norm: ΔW a = W δ (aᵀa)/‖a‖².

    W (M, D), or (B, M, D) for one weight per prompt; delta, a (B, D).
    Returns (delta_W (B, M, D), column (B, M), row (B, D)) with delta_W = column ⊗ row,
    column = W δ and row = a / ‖a‖². With W (M, D), delta and a may carry more leading
    axes: (B, T, D) gives one update per position, (B, T, M, D) (``positions``).
    Raises DegenerateQueryError where a = 0, naming ``block`` and ``vector`` (the name
    of a in the error message).
    """
    xp = namespace(W, delta, a)
    row = inverse_direction(a, block, vector)  # (B, D)  a/‖a‖²
    if W.ndim == 2:
        column = delta @ W.mT  # (B, M)  W δ per prompt
    else:
        column = (W @ xp.expand_dims(delta, axis=-1))[..., 0]  # (B, M)
    return outer(column, row), column, row  # (B, M, D)


class _LayerNormRstd(NamedTuple):
    rstd: Array  # (B, T, 1): all that forward's LayerNorm overflow check reads


class _KeptCache(NamedTuple):
    ln1: _LayerNormRstd | None
    ln2: _LayerNormRstd | None


def query_states(params: ModelParams, config: TransformerConfig, tokens: Array) -> list:
    """[(u, h)] per block: the query's MLP input and residual, (B, D) each, on ``tokens``.

    The numbers of ``forward(params, config, tokens, last_only=True)``'s caches at the
    last position, with forward's checks (one boolean read back), but block by block:
    each block's cache is dropped once its query row is copied out (and the LayerNorm
    scales the check reads), so the peak memory is one block's pass, not the stack's.
    """
    check_params(params, config)
    check_tokens(tokens, config, params)
    xp = namespace(tokens)
    L = config.n_blocks
    x, inputs, kept, states = tokens, [], [], []
    with quiet_checked_pass(True):
        for l, block_params in enumerate(params.blocks):
            inputs.append(x)
            x, cache = block_forward(x, block_params, config, last_only=l == L - 1)
            u = xp.asarray(cache.u[:, -1, :], copy=True)  # copies: a view keeps cache.u
            h = xp.asarray(cache.h[:, -1, :], copy=True)
            states.append((u, h))
            kept.append(
                _KeptCache(*(None if ln is None else _LayerNormRstd(ln.rstd)
                             for ln in (getattr(cache, "ln1", None), getattr(cache, "ln2", None))))
            )  # fmt: skip
            del cache
    check_forward_finite(tokens, x, params, None, inputs, kept)
    return states


def implicit_update(
    params: ModelParams,
    config: TransformerConfig,
    context: Array,
    query: Array,
    removed=None,
) -> tuple[ImplicitUpdate, ...]:
    """The patches that replace context tokens Y by weight updates, one per block.

        forward(params, config, remove_tokens(context, query, removed), patches=updates)

    reproduces ``forward(params, config, [context, query])`` at the query (last
    position), to rounding, for any Y ⊆ C and any number of blocks. For one block
    (docs/theory.md §2–3):

        u_C, h_C = the block's MLP input and residual at the query on [C, x]
        u_∅, h_∅ = the same on [C\\Y, x]
        ΔW = W1 (u_C − u_∅) u_∅ᵀ / ‖u_∅‖²,   Δb′ = h_C − h_∅ if mlp_skip else 0.

    A stack is patched sequentially, on the reduced prompt [C\\Y, x] (docs/theory.md §3):
    z_1 = [C\\Y, x] and, for l = 1..L,

        u_C, h_C = block l's query state in the run of the model on [C, x]
        u_∅, h_∅ = block l's query state on z_l (no patch of block l)
        ΔW_l, Δb′_l as above;   z_{l+1} = block l, patched with ΔW_l, Δb′_l, applied to z_l.

    The patch acts at every position of the reduced prompt, so the kept tokens' inputs
    to block l + 1 differ from their representations in the full run; u_∅ is computed
    after that change, and by induction the query's input to every block (hence its
    output) equals the full run's: (W + ΔW) u_∅ = W u_C, so the patched MLP gives
    M_W(u_C), and with an MLP skip h_∅ + M_W(u_C) + Δb′ = h_C + M_W(u_C) (M_W the MLP
    with first weight W, docs/theory.md §1). For Y = C the reduced prompt is the query alone,
    whose patched state is its with-context state, and the construction is the classic
    one: u_∅ from block l run on the query's with-context input alone. The patches of a
    partial Y depend on the kept tokens too; each ΔW_l is rank 1.

    Args:
        context: (B, N, D) the context tokens c_1..c_N of each prompt.
        query:   (B, D) the query token x of each prompt.
        removed: None (Y = C) or a sequence of context positions Y, the same for every
            prompt.

    Returns a tuple of ``ImplicitUpdate``, one per block; each is a ``BlockPatch``-shaped
    entry for ``forward(..., patches=...)`` (ΔW (B, M, D), used at every position).
    Raises DegenerateQueryError if u_∅ = 0 for some prompt, ValueError on bad input.
    Reference: Dherin et al. (2025), Theorem 2.2 in v1 (and its skip-connection form).
    """
    check_params(params, config)
    check_prompt(config, context, query)
    xp = namespace(context, query)
    B, N, D = context.shape
    L = config.n_blocks
    removed = removed_positions(removed, N)  # checked before any work is done

    tokens = xp.concat([context, xp.reshape(query, (B, 1, D))], axis=1)  # (B, N+1, D)
    with_context = query_states(params, config, tokens)  # [(u_C, h_C)] per block
    z = remove_tokens(context, query, removed)  # (B, N−|Y|+1, D): z_1 = [C\Y, x]

    updates = []
    for l, block_params in enumerate(params.blocks):
        u_C, h_C = with_context[l]  # (B, D) each
        _, without = block_forward(z, block_params, config, last_only=True)
        u_0 = without.u[:, -1, :]  # (B, D)  u_∅
        h_0 = without.h[:, -1, :]  # (B, D)  h_∅

        delta_u = u_C - u_0  # (B, D)
        delta_W, column, row = rank_one_update(block_params.mlp.W1, delta_u, u_0, block=l)
        delta_b = h_C - h_0 if config.mlp_skip else xp.zeros_like(h_C)
        update = ImplicitUpdate(delta_W, delta_b, column, row, delta_u, u_0)
        updates.append(update)
        if l < L - 1:
            # z_{l+1}: block l patched, at every position of the reduced prompt
            z, _ = block_forward(z, block_params, config, BlockPatch(delta_W, delta_b))
    return tuple(updates)


# -- non-uniqueness and the minimum norm ------------------------------------------------


def minimum_norm_solution(column: Array, u_without: Array) -> Array:
    """The minimum-Frobenius-norm X solving X a = W δ, by the pseudo-inverse: X = (W δ) a⁺.

    For a column vector a ≠ 0, a⁺ = aᵀ/‖a‖², so X equals the theorem's ΔW; this
    function computes a⁺ with ``linalg.pinv`` (an SVD), independently of that formula.

    column (B, M) = W δ, u_without (B, D) = a. Returns (B, M, D).
    Raises ValueError for a = 0 (no solution), NaN or infinity, or mismatched shapes;
    TypeError for mismatched dtypes or array types.
    """
    check_minimum_norm_inputs(column, u_without)
    xp = namespace(column, u_without)
    with quiet_checked_pass(True):  # an overflow is checked for just below
        a_pinv = xp.linalg.pinv(xp.expand_dims(u_without, axis=-1))  # (B, 1, D)
        X = xp.expand_dims(column, axis=-1) @ a_pinv  # (B, M, D)
    return check_result_finite(X, "minimum_norm_solution")


def null_space_perturbation(update: ImplicitUpdate, perturbation: Array) -> Array:
    """Another solution of X a = W δ: ΔW + Z⊥, where Z⊥ a = 0.

    Z⊥ = Z (I − a aᵀ/‖a‖²) is the part of ``perturbation`` Z that annihilates a = u_∅,
    so (W + ΔW + Z⊥) a = W (a + δ): the patched output at the query is unchanged. The
    rows of ΔW are multiples of aᵀ and the rows of Z⊥ are orthogonal to a, hence

        ‖ΔW + Z⊥‖²_F = ‖ΔW‖²_F + ‖Z⊥‖²_F > ‖ΔW‖²_F   whenever Z⊥ ≠ 0:

    ΔW is the minimum-norm solution (docs/theory.md §2).

    update: an ImplicitUpdate for B prompts; perturbation: Z, (M, D) or (B, M, D).
    Returns ΔW + Z⊥ (B, M, D). (An update with a position axis, delta_W (B, T, M, D), takes
    Z of shape (M, D) or (B, T, M, D).)
    """
    check_null_space_inputs(update, perturbation)
    xp = namespace(update.delta_W, perturbation)
    a = xp.expand_dims(update.u_without, axis=-1)  # (B, D, 1)
    with quiet_checked_pass(True):  # an overflow is checked for just below
        Z_a = perturbation @ a  # (B, M, 1)
        Z_perp = perturbation - Z_a * xp.expand_dims(update.row, axis=-2)  # (B, M, D)
        result = update.delta_W + Z_perp
    return check_result_finite(result, "null_space_perturbation")


# -- linear attention: the context vector in closed form --------------------------------


def linear_attention_context_vector(
    attn_params: AttentionParams, n_heads: int, context_tokens: Array, query_token: Array
) -> Array:
    """δA for un-normalised linear attention, in closed form (docs/theory.md §6):

        δA = W_O concat_h[ (Σ_{y∈Y} v_y k_yᵀ) q_x / √K ],
        v_y = W_V,h y,  k_y = W_K,h y,  q_x = W_Q,h x,

    the contribution of the tokens Y to the query's attention output (the dual form of
    Dai et al. 2023, here exact). The memory matrix Σ v kᵀ does not depend on x.

    context_tokens (B, |Y|, D): the attention inputs of the removed tokens (after LN1
    if the model has LayerNorm); query_token (B, D). Returns δA (B, D).
    Raises TypeError unless attn_params is an AttentionParams, ValueError for n_heads
    not dividing H·K, mismatched shapes, or NaN and infinity in the tokens.
    """
    n_heads = check_linear_attention_inputs(attn_params, n_heads, context_tokens, query_token)
    xp = namespace(context_tokens, query_token, attn_params.W_Q)
    B, _, D = context_tokens.shape
    with quiet_checked_pass(True):  # an overflow is checked for just below
        q, _ = linear_forward(xp.reshape(query_token, (B, 1, D)), attn_params.W_Q)  # (B, 1, H·K)
        k, _ = linear_forward(context_tokens, attn_params.W_K)  # (B, |Y|, H·K)
        v, _ = linear_forward(context_tokens, attn_params.W_V)  # (B, |Y|, H·K)
        q, k, v = split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads)
        K = q.shape[-1]
        memory = v.mT @ k  # (B, H, K, K)  Σ_y v_y k_yᵀ
        heads = (q @ memory.mT) * (1.0 / math.sqrt(K))  # (B, H, 1, K)
        out, _ = linear_forward(merge_heads(heads), attn_params.W_O)  # (B, 1, D)
    return check_result_finite(out[:, 0, :], "linear_attention_context_vector")
