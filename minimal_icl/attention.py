"""Multi-head self-attention, softmax or linear, built from forward/backward pairs.

For head h with Q_h = X W_Q,hᵀ, K_h = X W_K,hᵀ, V_h = X W_V,hᵀ (rows are tokens):

    S_h = Q_h K_hᵀ / √K                     scaled scores            (B, H, Tq, T)
    P_h = softmax(S_h + mask)               "softmax" attention (−inf above the diagonal)
    P_h = S_h ⊙ mask                        "linear" attention: un-normalised, masked to 0
    O   = concat_h(P_h V_h) W_Oᵀ            output at the query positions (B, Tq, D)

There are no biases in the projections, as in Dherin et al. (2025): a token alone gives
A(x) = W_O W_V x for softmax attention.

``last_only=True`` computes queries for the last position only (Tq = 1) while keys and
values still come from every token. The training loss reads only the last token of the
last block, so there this saves the work of T − 1 query rows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .backend import Array, device, namespace
from .linear import LinearCache, linear_backward, linear_forward
from .params import AttentionParams


# -- causal mask -----------------------------------------------------------------------


def causal_mask(n_queries: int, n_keys: int, xp, device=None) -> Array:
    """Boolean (Tq, T) mask, True where query i may attend to key j.

    The Tq queries are the last Tq of the T tokens, so query i sits at position
    T − Tq + i and sees keys j ≤ T − Tq + i. The diagonal is never masked.
    """
    ones = xp.ones((n_queries, n_keys), dtype=xp.bool, device=device)
    return xp.tril(ones, k=n_keys - n_queries)


class MaskCache(NamedTuple):
    mask: Array  # (Tq, T) bool


def mask_forward(scores: Array, mask: Array, fill: float) -> tuple[Array, MaskCache]:
    """Replace the scores a query may not see by ``fill`` (−inf for softmax, 0 for linear)."""
    xp = namespace(scores)
    return xp.where(mask, scores, xp.full_like(scores, fill)), MaskCache(mask)


def mask_backward(dmasked: Array, cache: MaskCache) -> Array:
    """Masked entries were constants: their gradient is 0."""
    xp = namespace(dmasked)
    # forward was: masked = where(mask, scores, fill)
    return xp.where(cache.mask, dmasked, xp.zeros_like(dmasked))


# -- softmax ---------------------------------------------------------------------------


class SoftmaxCache(NamedTuple):
    probs: Array  # (..., T) the output


def softmax_forward(scores: Array) -> tuple[Array, SoftmaxCache]:
    """softmax over the last axis, max-subtracted (exact, and exp never overflows)."""
    xp = namespace(scores)
    shifted = scores - xp.max(scores, axis=-1, keepdims=True)
    e = xp.exp(shifted)  # exp(−inf) = 0 for masked entries
    probs = e / xp.sum(e, axis=-1, keepdims=True)
    return probs, SoftmaxCache(probs)


def softmax_backward(dprobs: Array, cache: SoftmaxCache) -> Array:
    """dS = P ⊙ (dP − Σ_j dP_j P_j): the Jacobian of softmax applied to dP."""
    xp = namespace(dprobs)
    P = cache.probs
    # forward was: P = exp(S) / Σ exp(S)
    return P * (dprobs - xp.sum(dprobs * P, axis=-1, keepdims=True))


# -- heads -----------------------------------------------------------------------------


def split_heads(x: Array, n_heads: int) -> Array:
    """(B, T, H·K) -> (B, H, T, K)."""
    xp = namespace(x)
    B, T, HK = x.shape
    return xp.permute_dims(xp.reshape(x, (B, T, n_heads, HK // n_heads)), (0, 2, 1, 3))


def merge_heads(x: Array) -> Array:
    """(B, H, T, K) -> (B, T, H·K)."""
    xp = namespace(x)
    B, H, T, K = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (B, T, H * K))


# -- attention -------------------------------------------------------------------------


class AttentionCache(NamedTuple):
    q_proj: LinearCache  # input x_q (B, Tq, D) of the query projection
    k_proj: LinearCache  # input x (B, T, D)
    v_proj: LinearCache  # input x (B, T, D)
    o_proj: LinearCache  # input: the merged heads (B, Tq, H·K)
    q: Array  # (B, H, Tq, K)
    k: Array  # (B, H, T, K)
    v: Array  # (B, H, T, K)
    weights: Array  # (B, H, Tq, T) attention weights P
    softmax: SoftmaxCache | None  # None for linear attention
    mask: MaskCache | None  # None unless causal
    n_heads: int
    last_only: bool


def attention_forward(
    x: Array,
    p: AttentionParams,
    n_heads: int,
    kind: str = "softmax",
    causal: bool = False,
    last_only: bool = False,
) -> tuple[Array, AttentionCache]:
    """Self-attention over x (B, T, D); returns (B, T, D), or (B, 1, D) if ``last_only``."""
    xp = namespace(x, p.W_Q)
    B, T, D = x.shape
    x_q = x[:, -1:, :] if last_only else x  # (B, Tq, D)
    Tq = x_q.shape[1]

    q_flat, q_proj = linear_forward(x_q, p.W_Q)  # (B, Tq, H·K)
    k_flat, k_proj = linear_forward(x, p.W_K)  # (B, T, H·K)
    v_flat, v_proj = linear_forward(x, p.W_V)  # (B, T, H·K)
    q = split_heads(q_flat, n_heads)  # (B, H, Tq, K)
    k = split_heads(k_flat, n_heads)  # (B, H, T, K)
    v = split_heads(v_flat, n_heads)  # (B, H, T, K)
    d_head = q.shape[-1]

    scores = xp.matmul(q, xp.matrix_transpose(k)) * (1.0 / math.sqrt(d_head))  # (B, H, Tq, T)
    mask_cache = None
    if causal:
        mask = causal_mask(Tq, T, xp, device=device(x))
        scores, mask_cache = mask_forward(scores, mask, -math.inf if kind == "softmax" else 0.0)
    if kind == "softmax":
        weights, softmax_cache = softmax_forward(scores)
    elif kind == "linear":
        weights, softmax_cache = scores, None
    else:
        raise ValueError(f"unknown attention {kind!r}; use 'softmax' or 'linear'")

    heads = merge_heads(xp.matmul(weights, v))  # (B, Tq, H·K)
    out, o_proj = linear_forward(heads, p.W_O)  # (B, Tq, D)
    cache = AttentionCache(
        q_proj, k_proj, v_proj, o_proj, q, k, v, weights, softmax_cache, mask_cache,
        n_heads, last_only,
    )
    return out, cache


def head_projection_backward(
    M: Array, G: Array, proj: LinearCache
) -> tuple[Array, Array]:
    """Backward of a key or value projection Y = x Wᵀ whose gradient per head is Mₕᵀ Gₕ.

    Keys: dKₕ = dSₕᵀ Qₕ (M = dS, G = Q). Values: dVₕ = Pₕᵀ dPVₕ (M = P, G = dPV).
    Shapes: M (B, H, Tq, T), G (B, H, Tq, K), proj caches x (B, T, D) and W (H·K, D).
    Returns (dx (B, T, D), dW (H·K, D)), by either of two orders of the same products:

        direct:        dYₕ = Mₕᵀ Gₕ  (B, H, T, K);   dx = merge(dY) W;   dW = Σ_b merge(dY)ᵀ x
        reassociated:  dx = Σₕ Mₕᵀ (Gₕ Wₕ);          dWₕ = Σ_b Gₕᵀ (Mₕ x)

    The reassociated order never builds the (B, H, T, K) array dY. It costs about
    2·Tq·D multiply-adds per (prompt, head, token) against Tq·K + 2·K·D for the direct
    order, so it is chosen when that is smaller: always with ``last_only`` (Tq = 1),
    and for narrow tokens (D < K/2 roughly) on every position.
    """
    x, W = proj.x, proj.W
    xp = namespace(M, G, x)
    B, H, Tq, T = M.shape
    K, D = G.shape[-1], x.shape[-1]
    if 2 * Tq * D >= Tq * K + 2 * K * D:
        dx, dW, _ = linear_backward(merge_heads(xp.matmul(xp.matrix_transpose(M), G)), proj)
        return dx, dW
    # Products with a per-head weight Wₕ run per head over all prompts and query rows
    # (H matmuls); products with a per-prompt x run per prompt with the heads stacked
    # along the rows (B matmuls). Small matmuls cost more in calls than in arithmetic.
    def per_head(a):  # (B, H, Tq, ·) -> (H, B·Tq, ·)
        return xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (H, B * Tq, a.shape[-1]))

    def per_prompt(a):  # (H, B·Tq, ·) -> (B, H·Tq, ·)
        a = xp.reshape(a, (H, B, Tq, a.shape[-1]))
        return xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (B, H * Tq, a.shape[-1]))

    M_stacked = xp.reshape(M, (B, H * Tq, T))  # (B, H·Tq, T)
    G_heads = per_head(G)  # (H, B·Tq, K)
    GW = per_prompt(xp.matmul(G_heads, xp.reshape(W, (H, K, D))))  # (B, H·Tq, D)  Gₕ Wₕ
    # Σₕ Mₕᵀ (Gₕ Wₕ): the sum over heads is part of the contraction over H·Tq rows
    dx = xp.matmul(xp.matrix_transpose(M_stacked), GW)  # (B, T, D)
    Mx = xp.reshape(xp.matmul(M_stacked, x), (B, H, Tq, D))  # (B, H, Tq, D)  Mₕ x
    # dWₕ = Σ over prompts and query rows of Gₕᵀ (Mₕ x)
    dW = xp.matmul(xp.matrix_transpose(G_heads), per_head(Mx))  # (H, K, D)
    return dx, xp.reshape(dW, (H * K, D))


def attention_backward(dout: Array, cache: AttentionCache) -> tuple[Array, AttentionParams]:
    """Returns (dx, AttentionParams of gradients); dx has the shape of the input x."""
    c = cache
    xp = namespace(dout, c.q)
    d_head = c.q.shape[-1]

    # forward was: out = heads W_Oᵀ
    dheads, dW_O, _ = linear_backward(dout, c.o_proj)
    # forward was: heads = merge(P V)
    dPV = split_heads(dheads, c.n_heads)  # (B, H, Tq, K)
    dweights = xp.matmul(dPV, xp.matrix_transpose(c.v))  # (B, H, Tq, T)
    # (dV = Pᵀ dPV is folded into the V projection's backward below)
    # forward was: P = softmax(S) (or P = S for linear attention)
    dscores = dweights if c.softmax is None else softmax_backward(dweights, c.softmax)
    # forward was: S = where(mask, S, fill)
    if c.mask is not None:
        dscores = mask_backward(dscores, c.mask)
    # forward was: S = Q Kᵀ / √K
    dscores = dscores * (1.0 / math.sqrt(d_head))
    dq = xp.matmul(dscores, c.k)  # (B, H, Tq, K)
    # (dK = dSᵀ Q is folded into the K projection's backward below)
    # forward was: Q, K, V = split(x_q W_Qᵀ), split(x W_Kᵀ), split(x W_Vᵀ)
    dx_q, dW_Q, _ = linear_backward(merge_heads(dq), c.q_proj)
    dx_k, dW_K = head_projection_backward(dscores, c.q, c.k_proj)  # dK = dSᵀ Q
    dx_v, dW_V = head_projection_backward(c.weights, dPV, c.v_proj)  # dV = Pᵀ dPV

    dx = dx_k + dx_v
    if c.last_only:
        # forward was: x_q = x[:, -1:]; its gradient lands on the last position only
        dx = xp.concat([dx[:, :-1, :], dx[:, -1:, :] + dx_q], axis=1)
    else:
        dx = dx + dx_q
    return dx, AttentionParams(W_Q=dW_Q, W_K=dW_K, W_V=dW_V, W_O=dW_O)
