"""``attention_backward`` reassociated: what ``model.backward(..., fast=True)`` runs.

``attention.attention_backward`` builds the key and value gradients dk = dSᵀ q and
dv = Pᵀ dPv, (B, H, T, K) each, and passes them through the projections' backward. For
a projection y = x Wᵀ (W of shape (H·K, D), Wₕ the K rows of one head) whose gradient per
head is dyₕ = mixingₕᵀ factorₕ, the same dx and dW come out of either order of the products:

    direct:        dyₕ = mixingₕᵀ factorₕ  (B, H, T, K);   dx = merge(dy) W;
                   dW = Σ_b merge(dy)ᵀ x
    reassociated:  dx = Σₕ mixingₕᵀ (factorₕ Wₕ);   dWₕ = Σ_b factorₕᵀ (mixingₕ x)

with mixing = dS, factor = q for the keys and mixing = P, factor = dPv for the values:
``mixing`` (Tq, T) per head weighs the T tokens for each query row, ``factor`` (Tq, K)
per head holds the K-wide vector of each query row. The reassociated order never builds
the (B, H, T, K) array dy. It costs about 2·Tq·D multiply-adds per (prompt, head, token)
against Tq·K + 2·K·D for the direct order, so it wins when the
queries are few (``last_only``: Tq = 1, as in training) or the tokens narrow (D < K/2
roughly). ``attention_backward_fast`` takes whichever order is cheaper, per projection.
The two orders are the same sums, so they agree to rounding: tests/test_attention_fast.py
shows ``attention_backward_fast`` equal to ``attention_backward`` within 1e-12 of the
terms each gradient is summed from (float64), on every configuration of the model grid
at its widths, and with heads wider than the tokens on the grid's pairwise selection.
In the training step of ``paper_setting`` (B = 64, T = 51, H = 8, K = 2) it takes a
fifth of the textbook backward's time (0.25 ms against 1.2 ms for the attention's
backward with ``last_only``, on one core). Training itself runs ``model_fast``, which
restructures the forward as well (in the block computed at the query only, no key or
value array is built: the heads' circuits read the tokens).
"""

from __future__ import annotations

import math

from .attention import AttentionCache, mask_backward, merge_heads, softmax_backward, split_heads
from .backend import Array, namespace
from .linear import LinearCache, linear_backward
from .params import AttentionParams


def head_projection_backward(
    mixing: Array, factor: Array, proj: LinearCache
) -> tuple[Array, Array]:
    """Backward of a key or value projection y = x Wᵀ whose gradient per head is
    dyₕ = mixingₕᵀ factorₕ.

    Keys: dkₕ = dSₕᵀ qₕ (mixing = dS, factor = q). Values: dvₕ = Pₕᵀ dPvₕ (mixing = P,
    factor = dPv). Shapes: mixing (B, H, Tq, T), factor (B, H, Tq, K); proj caches
    x (B, T, D) and W (H·K, D).
    Returns (dx (B, T, D), dW (H·K, D)) by the cheaper order (see the module docstring).
    """
    x, W = proj.x, proj.W
    xp = namespace(mixing, factor, x)
    B, H, Tq, T = mixing.shape
    K, D = factor.shape[-1], x.shape[-1]
    if 2 * Tq * D >= Tq * K + 2 * K * D:
        dx, dW, _ = linear_backward(merge_heads(mixing.mT @ factor), proj)  # the direct order
        return dx, dW

    # Products with a per-head weight Wₕ run per head over all prompts and query rows
    # (H matmuls); products with a per-prompt x run per prompt with the heads stacked
    # along the rows (B matmuls). Small matmuls cost more in calls than in arithmetic.
    def per_head(a):  # (B, H, Tq, ·) -> (H, B·Tq, ·)
        return xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (H, B * Tq, a.shape[-1]))

    def per_prompt(a):  # (H, B·Tq, ·) -> (B, H·Tq, ·)
        a = xp.reshape(a, (H, B, Tq, a.shape[-1]))
        return xp.reshape(xp.permute_dims(a, (1, 0, 2, 3)), (B, H * Tq, a.shape[-1]))

    mixing_stacked = xp.reshape(mixing, (B, H * Tq, T))  # (B, H·Tq, T)
    factor_heads = per_head(factor)  # (H, B·Tq, K)
    factor_W = per_prompt(factor_heads @ xp.reshape(W, (H, K, D)))  # (B, H·Tq, D)  factorₕ Wₕ
    # Σₕ mixingₕᵀ (factorₕ Wₕ): the sum over heads is part of the contraction over H·Tq rows
    dx = mixing_stacked.mT @ factor_W  # (B, T, D)
    mixing_x = xp.reshape(mixing_stacked @ x, (B, H, Tq, D))  # (B, H, Tq, D)  mixingₕ x
    # dWₕ = Σ over prompts and query rows of factorₕᵀ (mixingₕ x)
    dW = factor_heads.mT @ per_head(mixing_x)  # (H, K, D)
    return dx, xp.reshape(dW, (H * K, D))


def attention_backward_fast(dout: Array, cache: AttentionCache) -> tuple[Array, AttentionParams]:
    """``attention_backward`` with the key and value projections by ``head_projection_backward``.

    Same arguments and results: (dx (B, T, D), AttentionParams of gradients). The steps
    up to dS and dq are those of ``attention_backward``.
    """
    c = cache
    K = c.q.shape[-1]
    dheads, dW_O, _ = linear_backward(dout, c.o_proj)  # (B, Tq, H·K)
    dPv = split_heads(dheads, c.n_heads)  # (B, H, Tq, K)
    dweights = dPv @ c.v.mT  # (B, H, Tq, T)  dP = dPv vᵀ
    dscores = dweights if c.softmax is None else softmax_backward(dweights, c.softmax)
    if c.mask is not None:
        dscores = mask_backward(dscores, c.mask)
    dscores = dscores / math.sqrt(K)
    dq = dscores @ c.k  # (B, H, Tq, K)

    dx_v, dW_V = head_projection_backward(c.weights, dPv, c.v_proj)  # dv = Pᵀ dPv
    dx_k, dW_K = head_projection_backward(dscores, c.q, c.k_proj)  # dk = dSᵀ q
    dx_q, dW_Q, _ = linear_backward(merge_heads(dq), c.q_proj)  # (B, Tq, D)
    dx = dx_k + dx_v
    if c.last_only:  # dx_q lands on the last position only
        xp = namespace(dx)
        dx = xp.concat([dx[:, :-1, :], dx[:, -1:, :] + dx_q], axis=1)
    else:
        dx = dx + dx_q
    return dx, AttentionParams(W_Q=dW_Q, W_K=dW_K, W_V=dW_V, W_O=dW_O)
