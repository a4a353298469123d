"""Multi-head self-attention, softmax or linear, a forward/backward pair.

For each head (its K rows W_Q,h, W_K,h, W_V,h of each projection; one row per token):

    q = x_q W_Q,hᵀ                    queries                          (B, H, Tq, K)
    k = x W_K,hᵀ,  v = x W_V,hᵀ       keys and values                  (B, H, T, K)
    S = q kᵀ / √K                     scores                           (B, H, Tq, T)
    P = softmax(S)                    "softmax" attention; if causal, S = −inf above the diagonal
    P = S                             "linear" attention, un-normalised; if causal, S = 0 there
    out = concat_h(P v) W_Oᵀ          output at the query positions    (B, Tq, D)

Here x (B, T, D) is the layer's input, one token per row: the tokens z entering the
block, after LN1 with LayerNorm (docs/notation.md); x_q holds its rows at the query
positions (not the regression input x_q of the notation table).

There are no biases in the projections (the package's choice, README "Our choices"): a
token alone gives A(x) = W_O W_V x for softmax attention.

``last_only=True`` takes the queries from the last position only (x_q = x[:, -1:],
Tq = 1) while keys and values still come from every token: the model's output is read at
the query, and the training loss reads only the last token of the last block.

``attention_backward`` is the textbook backward, the forward read in reverse.
``attention_fast.attention_backward_fast`` gives the same gradients (to rounding),
choosing per projection the cheaper order of its products (with few queries, the order
that never builds the (B, H, T, K) gradients of the keys and values);
``model.backward(..., fast=True)`` uses it, and training uses ``model_fast``, the
whole query-only step written for speed. Both are tested equal to this textbook path.
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
    weights: Array  # (B, H, Tq, T) the attention weights P
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
    """Self-attention over x (B, T, D); returns (B, T, D), or (B, 1, D) if ``last_only``.

    Per head: q = x_q W_Q,hᵀ, k = x W_K,hᵀ, v = x W_V,hᵀ; S = q kᵀ/√K; P = softmax(S) or
    P = S; out = concat_h(P v) W_Oᵀ (see the module docstring). Returns (out, AttentionCache).
    """
    B, T, D = x.shape
    x_q = x[:, -1:, :] if last_only else x  # (B, Tq, D) the positions that query

    q_flat, q_proj = linear_forward(x_q, p.W_Q)  # (B, Tq, H·K)
    k_flat, k_proj = linear_forward(x, p.W_K)  # (B, T, H·K)
    v_flat, v_proj = linear_forward(x, p.W_V)  # (B, T, H·K)
    q = split_heads(q_flat, n_heads)  # (B, H, Tq, K)
    k = split_heads(k_flat, n_heads)  # (B, H, T, K)
    v = split_heads(v_flat, n_heads)  # (B, H, T, K)
    Tq, K = q.shape[-2], q.shape[-1]

    scores = (q @ k.mT) / math.sqrt(K)  # (B, H, Tq, T)  S = q kᵀ/√K
    mask_cache = None
    if causal:
        mask = causal_mask(Tq, T, namespace(x), device=device(x))
        scores, mask_cache = mask_forward(scores, mask, -math.inf if kind == "softmax" else 0.0)
    if kind == "softmax":
        weights, softmax_cache = softmax_forward(scores)  # P = softmax(S)
    else:  # "linear" (TransformerConfig refuses any other kind)
        weights, softmax_cache = scores, None  # P = S

    heads = merge_heads(weights @ v)  # (B, Tq, H·K)  concat_h(P v)
    out, o_proj = linear_forward(heads, p.W_O)  # (B, Tq, D)
    cache = AttentionCache(
        q_proj, k_proj, v_proj, o_proj, q, k, v, weights, softmax_cache, mask_cache,
        n_heads, last_only,
    )
    return out, cache


def attention_backward(dout: Array, cache: AttentionCache) -> tuple[Array, AttentionParams]:
    """The gradients of attention_forward, each step the mirror of a forward line.

    With dPv = ∂loss/∂(P v) and dS = ∂loss/∂S (per head):

        dP = dPv vᵀ            dv = Pᵀ dPv
        dS = softmax_backward(dP) (dS = dP for linear attention), 0 where masked
        dq = dS k / √K         dk = dSᵀ q / √K

    and each projection's dx and dW come from ``linear_backward`` on the merged heads.
    The (B, H, T, K) arrays dk and dv are built explicitly; ``attention_fast`` computes
    the same gradients without them where that is cheaper.
    Returns (dx (B, T, D), AttentionParams of gradients).
    """
    c = cache
    K = c.q.shape[-1]

    # forward was: out = heads W_Oᵀ
    dheads, dW_O, _ = linear_backward(dout, c.o_proj)  # (B, Tq, H·K)
    # forward was: heads = merge_heads(P v)
    dPv = split_heads(dheads, c.n_heads)  # (B, H, Tq, K)
    dweights = dPv @ c.v.mT  # (B, H, Tq, T)  dP = dPv vᵀ
    dv = c.weights.mT @ dPv  # (B, H, T, K)   dv = Pᵀ dPv
    # forward was: P = softmax(S) (or P = S for linear attention)
    dscores = dweights if c.softmax is None else softmax_backward(dweights, c.softmax)
    # forward was: S = where(mask, S, fill)
    if c.mask is not None:
        dscores = mask_backward(dscores, c.mask)
    # forward was: S = q kᵀ / √K, so the product q kᵀ gets dS/√K
    dscores = dscores / math.sqrt(K)
    dq = dscores @ c.k  # (B, H, Tq, K)  dq = dS k/√K
    dk = dscores.mT @ c.q  # (B, H, T, K)  dk = dSᵀ q/√K
    # forward was: v = split_heads(x W_Vᵀ)
    dx_v, dW_V, _ = linear_backward(merge_heads(dv), c.v_proj)  # (B, T, D)
    # forward was: k = split_heads(x W_Kᵀ)
    dx_k, dW_K, _ = linear_backward(merge_heads(dk), c.k_proj)  # (B, T, D)
    # forward was: q = split_heads(x_q W_Qᵀ)
    dx_q, dW_Q, _ = linear_backward(merge_heads(dq), c.q_proj)  # (B, Tq, D)
    # forward was: x_q = x[:, -1:] (last_only) or x_q = x; x also fed the keys and values
    if c.last_only:
        xp = namespace(dx_q)
        dx_q = xp.concat([xp.zeros_like(dx_v[:, :-1, :]), dx_q], axis=1)  # (B, T, D)
    dx = dx_k + dx_v + dx_q
    return dx, AttentionParams(W_Q=dW_Q, W_K=dW_K, W_V=dW_V, W_O=dW_O)
