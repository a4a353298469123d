"""The model's forward and backward restructured for speed: what training runs.

``model.forward`` / ``model.backward`` read like the maths, one layer at a time
(attention.py, mlp.py, layernorm.py). This module computes the same outputs and gradients
by other products, chosen for few and large array operations. It is what ``train_step``
calls; the tutorials and the theorems read the textbook layers. Five changes:

* **The query row's attention without keys or values.** In a block computed at the last
  position only (``last_only``, Tq = 1: the last block in training), per head h with
  q = W_Q,h x_q / √K, the scores and the attention output are

      S_t = x_tᵀ (W_K,hᵀ q)            r_h = W_K,hᵀ q   (D,)  instead of k_t = W_K,h x_t
      out_h = W_V,h (Σ_t P_t x_t)       ȳ_h = Σ_t P_t x_t (D,) instead of v_t = W_V,h x_t

  so no (B, T, H·K) key or value array is built: one (B, H, D) @ (B, D, T) product gives
  the scores (B, H, T), one (B, H, T) @ (B, T, D + 1) product with [x, 1] the averaged
  tokens Σ_t E_t x_t and the softmax denominators ℓ = Σ_t E_t together. The backward is
  the same in reverse: dȳ_h = W_V,hᵀ d out_h, dP_t = x_tᵀ dȳ_h, dr_h = Σ_t dS_t x_t,
  dW_V,h = Σ_b d out_h ȳ_hᵀ, dW_K,h = Σ_b q_h dr_hᵀ.
* **The query row's softmax shifted by a bound.** Any shift c ≥ max_t S_t gives the same
  weights; c_h = ‖r_h‖₁ max|x| (Hölder) costs a product on (B·H, D) rows where the
  maximum over the keys and its broadcast subtraction cost as much as the exponential
  (:func:`_softmax_average`, with the exact maximum where the bound is too loose for
  the exponent range, and for arrays other than NumPy's).
* **Per-head weights as one block-diagonal product.** r = (W_K,hᵀ q_h)_h for all heads
  is one GEMM of the (B, H·K) queries with the (H·K, H·D) block-diagonal matrix
  diag(W_K,1, …, W_K,H); likewise out = ȳ diag(W_V,h)ᵀ and their backward.
* **Softmax's Jacobian through a vector the forward already has.** With o = P v (or ȳ),

      Σ_t dP_t P_t = dPv · o      (the per-row sum of softmax_backward),

  so dP − Σ_t dP_t P_t is one augmented product, [dPv, −dPv · o] [v, 1]ᵀ, and with the
  unnormalised weights E = exp(S − c) the row sums ℓ divide the small outputs
  (o = (E v)/ℓ) and gradients instead of the weights: dS = E ⊙ [dPv/ℓ, −(dPv · o)/ℓ] [v, 1]ᵀ.
* **Every position at once** in the other blocks: queries, keys and values from one
  (B·T, D) @ (D, 3·H·K) GEMM with 1/√K folded into W_Q, the scores kept transposed
  (keys along axis 2, so the maximum over the keys runs down columns), and row means
  and column sums (LayerNorm, biases) as products with a vector of ones.

The results equal the textbook pass to rounding (tests/test_model_fast.py, float64):
every output within IDENTITY_RTOL = 1e-12 on the 768 unpatched configurations of the
model grid (the patched half runs the textbook pass); the token and parameter gradients
as one vector within 1e-12 of its largest entry (both, where the textbook pass is itself
that sensitive to rounding, within a few times how far it moves when its inputs move by
one rounding unit: needed on CuPy for a few causal linear stacks); each attention call within 1e-12 of the
terms its gradients are summed from; NumPy on the whole grid, array_api_strict on its
pairwise covering selection. Configurations this
module does not cover (patched blocks, or a contextual layer other than attention) go
to the textbook pass: see :func:`covers`. Pure array-API code, no compiled extension;
``backend.reshape`` and ``backend.constant`` (vectors of ones made once) save NumPy's
per-call overhead, which at the paper's sizes costs more than the arithmetic.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy

from .activations import activation_backward, activation_forward
from .attention import causal_mask
from .backend import Array, cached_per_device, constant, device, namespace, reshape
from .config import TransformerConfig
from .loss import query_loss
from .params import AttentionParams, LayerNormParams, MLPParams, ModelParams
from .validation import check_params, check_tokens

# The fields of TransformerConfig this module implements; any other field must hold its
# default value (a layer added later is off) for :func:`covers` to say yes.
_IMPLEMENTED = {
    "d_token", "n_blocks", "n_heads", "d_head", "d_mlp", "attention", "activation",
    "causal", "attn_skip", "mlp_skip", "layer_norm", "ln_eps",
}  # fmt: skip


def covers(config: TransformerConfig, patches=None) -> bool:
    """Whether the fast pass computes this configuration: attention ("softmax" or
    "linear") as the contextual layer, and no patches. Anything else (a recurrent
    contextual layer, per-prompt patches) is the textbook pass's."""
    if patches is not None and any(p is not None for p in patches):
        return False
    return _covers_config(config)


@functools.lru_cache(maxsize=64)
def _covers_config(config: TransformerConfig) -> bool:  # configs are frozen: hashable
    if config.attention not in ("softmax", "linear"):
        return False
    fields = type(config).__dataclass_fields__
    for name, field in fields.items():
        if name not in _IMPLEMENTED and getattr(config, name) != field.default:
            return False
    return True


# -- helpers -----------------------------------------------------------------------------


def block_diagonal(W: Array, n_heads: int) -> Array:
    """diag(W_1, …, W_H) for a per-head weight W (H·K, D): shape (H·K, H·D).

    Row block h, column block h is W_h (K, D); every other block is 0. Then
    (q diag(W_h))[b, h·D:(h+1)·D] = W_hᵀ q_h for queries q (B, H·K). A stack of
    weights (S, H·K, D) gives the stack of their block-diagonal matrices (S, H·K, H·D).
    """
    xp = namespace(W)
    *stack, HK, D = W.shape
    H, K = n_heads, HK // n_heads
    blocks = _head_eye(xp, H, W.dtype, device(W)) * reshape(W, (*stack, H, K, 1, D))
    return reshape(blocks, (*stack, HK, H * D))


@cached_per_device(maxsize=16)
def _head_eye(xp, n_heads: int, dtype, dev) -> Array:
    """The identity I_H as an (H, 1, H, 1) array, made once per namespace, size, dtype and
    device (:func:`~minimal_icl.backend.cached_per_device`; read only: every use
    multiplies it into a new array)."""
    return xp.reshape(xp.eye(n_heads, dtype=dtype, device=dev), (n_heads, 1, n_heads, 1))


def per_head_outer(a: Array, b: Array) -> Array:
    """Σ_b a_hᵀ b_h per head: a (B, H, K), b (B, H, D) -> (H·K, D)."""
    xp = namespace(a, b)
    B, H, K = a.shape
    prod = xp.permute_dims(a, (1, 2, 0)) @ xp.permute_dims(b, (1, 0, 2))  # (H, K, D)
    return reshape(prod, (H * K, b.shape[-1]))


class RowNormCache(NamedTuple):
    x_hat: Array  # (R, D) the normalised rows
    rstd: Array  # (R, 1) 1/√(σ² + eps)
    gain: Array  # (D,)
    ones: Array  # (D, 1) ones: row means as products


def _layernorm(x: Array, p: LayerNormParams | None, eps: float):
    """``layernorm.layernorm_forward`` on rows x (R, D), the row means as products with a
    ones vector (one GEMV instead of a reduction per row). Identity when p is None."""
    if p is None:
        return x, None
    xp = namespace(x)
    D = x.shape[-1]
    ones = xp.ones((D, 1), dtype=x.dtype, device=device(x))
    xc = x - (x @ ones) * (1.0 / D)  # x − μ
    rstd = 1.0 / xp.sqrt(((xc * xc) @ ones) * (1.0 / D) + eps)  # biased variance
    x_hat = xc * rstd
    return x_hat * p.gain + p.bias, RowNormCache(x_hat, rstd, p.gain, ones)


def _layernorm_backward(dy: Array, c: RowNormCache):
    """``layernorm.layernorm_backward`` on rows: dx = rstd (dx̂ − mean dx̂ − x̂ mean(dx̂ x̂))."""
    D = dy.shape[-1]
    dgain = column_sums(dy * c.x_hat)
    dbias = column_sums(dy)
    dx_hat = dy * c.gain
    mean = (dx_hat @ c.ones) * (1.0 / D)
    mean_x = ((dx_hat * c.x_hat) @ c.ones) * (1.0 / D)
    dx = c.rstd * (dx_hat - mean - c.x_hat * mean_x)
    return dx, LayerNormParams(gain=dgain, bias=dbias)


def _activation(x: Array, kind: str):
    """relu as max(x, 0) against a 0-d zero made once (no zeros array); gelu as
    ``activations``."""
    if kind != "relu":
        return activation_forward(x, kind)
    xp = namespace(x)
    zero = constant(xp, (), 0.0, x.dtype, device(x))
    return xp.maximum(x, zero), (x, zero)


def _activation_backward(dy: Array, cache, kind: str):
    if kind != "relu":
        return activation_backward(dy, cache)
    xp = namespace(dy)
    x, zero = cache
    # relu'(x) = 1 for x > 0, 0 for x ≤ 0, as a 0/1 factor: NumPy's where is ten times
    # slower than a cast and a product (only a non-finite dy at x ≤ 0 would tell them
    # apart: 0 from where, NaN from the product)
    return dy * xp.astype(x > zero, dy.dtype)


# -- caches ------------------------------------------------------------------------------


class QueryAttentionCache(NamedTuple):
    """The attention of a block computed at the last position only (Tq = 1)."""

    x: Array  # (B, T, D) the attention input u1
    xT: Array  # (B, D + 1, T) [x, 1]ᵀ, C-contiguous
    q: Array  # (B, H·K)   W_Q x_q / √K
    r: Array  # (B, H, D)  W_K,hᵀ q_h
    E: Array  # (B, H, T)  exp(S − c) (softmax: c the bound of _softmax_average, or max S
    #                 on the exact path) or the scores S (linear)
    inv_norm: Array | None  # (B, H, 1) 1/ℓ, ℓ = Σ_t E (softmax); None (linear)
    y: Array  # (B, H, D)  Σ_t P_t x_t
    heads: Array  # (B, H·K)
    K_diag: Array  # (H·K, H·D) diag(W_K,h)
    V_diag: Array  # (H·K, H·D) diag(W_V,h)


class FullAttentionCache(NamedTuple):
    """The attention of a block computed at every position (scores transposed)."""

    x: Array  # (B, T, D) the attention input u1
    W_qkv: Array  # (3·H·K, D) [W_Q/√K; W_K; W_V]
    q: Array  # (B, H, T, K) queries, 1/√K included
    k: Array  # (B, H, T, K)
    v: Array  # (B, H, T, K)
    v1: Array | None  # (B, H, T, K + 1) [v, 1] (softmax), None (linear)
    E: Array  # (B, H, T, T) Eᵀ = exp(Sᵀ − max) (softmax) or Sᵀ (linear), masked
    inv_norm: Array | None  # (B, H, T, 1) 1/ℓ, ℓ = Σ_keys E (softmax), None (linear)
    o: Array  # (B, H, T, K) P v
    heads: Array  # (B, T, H·K)
    mask: Array | None  # (T, T) 0/1 of the dtype, transposed (causal linear), else None


class FastBlockCache(NamedTuple):
    params: object  # the BlockParams
    z: Array  # (B, T, D) the block input
    ln1: object
    attn: QueryAttentionCache | FullAttentionCache
    ln2: object
    u: Array  # (B·Tq, D) the MLP input rows
    pre: object  # the activation's cache
    hidden: Array  # (B·Tq, M)
    query_only: bool


class FastCache(NamedTuple):
    config: TransformerConfig
    blocks: tuple
    last_only: bool


# -- attention ---------------------------------------------------------------------------


def _query_attention(x: Array, p: AttentionParams, config: TransformerConfig):
    """Attention at the last position of x (B, T, D); returns (A (B, D), cache)."""
    xp = namespace(x)
    B, T, D = x.shape
    H, K = config.n_heads, config.d_head
    dev = device(x)
    W_KV = reshape(xp.concat([p.W_K, p.W_V], axis=None), (2, H * K, D))
    KV_diag = block_diagonal(W_KV, H)  # (2, H·K, H·D)
    K_diag, V_diag = KV_diag[0, ...], KV_diag[1, ...]
    # [x, 1]ᵀ as a C-contiguous (B, D + 1, T) array: batched products with its rows run
    # at GEMM speed, and its row of ones gives sums over t (ℓ, the shift) as products
    xT = xp.empty((B, D + 1, T), dtype=x.dtype, device=dev)
    xT[:, :D, :] = xp.permute_dims(x, (0, 2, 1))
    xT[:, D, :] = 1.0
    q = (x[:, -1, :] @ p.W_Q.mT) * (1.0 / math.sqrt(K))  # (B, H·K)
    r = reshape(q @ K_diag, (B, H, D))  # (B, H, D)   r_h = W_K,hᵀ q_h
    if config.attention == "linear":
        S = r @ xT[:, :D, :]  # (B, H, T)  S_t = r_hᵀ x_t = q_h · k_t
        E, inv_norm = S, None  # the query sees every key: no causal mask at the last position
        y = S @ x
    else:
        E, inv_norm, y = _softmax_average(r, x, xT)
    heads = reshape(y, (B, H * D)) @ V_diag.mT  # (B, H·K)  W_V,h ȳ_h
    A = heads @ p.W_O.mT  # (B, D)
    return A, QueryAttentionCache(x, xT, q, r, E, inv_norm, y, heads, K_diag, V_diag)


def _softmax_average(r: Array, x: Array, xT: Array):
    """ȳ_h = Σ_t P_t x_t with P = softmax_t(S), S_t = r_hᵀ x_t, by a shift bounded above.

    Softmax is the same for every shift c of the scores, P = exp(S − c)/Σ_t exp(S − c).
    The textbook takes c = max_t S_t: a maximum over the T keys and a broadcast
    subtraction on the (B, H, T) scores, which in the paper's step cost more than the
    exponential. Here, by Hölder's inequality, with m the largest |entry| of the batch's x,

        c_h = ‖r_h‖₁ m ≥ Σ_d |r_h,d| |x_t,d| ≥ r_hᵀ x_t = S_t    for every t,

    from a product on the (B·H, D) rows of r and one maximum over x, and −c_h enters the
    scores' product as a last coordinate of r against the row of ones of [x, 1]ᵀ.
    Every exp(S_t − c) ≤ 1 (up to rounding), so nothing overflows. Precision costs two
    things. S_t − c is rounded at the size of c, so each weight P = E/ℓ carries a
    relative error of about eps·c where the exact maximum leaves eps·max_t |S_t|. And an
    exp(S_t − c) below smallest_normal is rounded on the subnormal grid, by at most
    smallest_normal·eps/2: while ℓ = Σ_t exp(S_t − c) ≥ T·smallest_normal, that adds at
    most eps/2 to the weights, whose sum is 1. Where some ℓ leaves [T·smallest_normal, 2T]
    (a non-finite score, or a bound looser than the exponent range allows), the batch is
    redone with the exact maximum, :func:`_softmax_average_exact` (tests compare them).
    So c − max_t S_t ≤ −ln(smallest_normal), 708 in float64 and 87 in float32, and the
    first cost stays below about 1.6e-13 in float64 and 1e-5 in float32 (measured at gaps
    of 700 and 85: 4e-14 and 5e-6; on the trained paper model's batches the gap stays
    below 20, so in float32 about 1e-6).
    That check reads two numbers back: free for NumPy, a synchronisation per step on a
    GPU, so arrays of other libraries take the exact maximum directly (a training step
    reads nothing back there, tests/test_errors.py).

    r (B, H, D), x (B, T, D), xT = [x, 1]ᵀ (B, D + 1, T). Returns (E (B, H, T) =
    exp(S − c), 1/ℓ (B, H, 1), ȳ (B, H, D)).
    """
    xp = namespace(x)
    B, T, D = x.shape
    H = r.shape[1]
    if type(x) is not numpy.ndarray:
        return _softmax_average_exact(r, xT)
    m = max(float(xp.max(x)), -float(xp.min(x)))  # max |x| (two reductions, no |x| array)
    minus_ones = constant(xp, (D, 1), -1.0, x.dtype, device(x))
    r_rows = reshape(r, (B * H, D))  # a product of rows, not a batch of tiny products
    minus_shift = reshape(xp.abs(r_rows) @ minus_ones, (B, H, 1)) * m  # (B, H, 1)  −c_h
    E = xp.exp(xp.concat([r, minus_shift], axis=-1) @ xT)  # (B, H, T)  exp(S − c)
    yl = E @ xT.mT  # (B, H, D + 1): [Σ_t E_t x_t, ℓ]
    norm = yl[..., D:]  # (B, H, 1)  ℓ
    low, high = T * xp.finfo(x.dtype).smallest_normal, 2.0 * T
    # NaN fails both comparisons: a non-finite score also takes the exact path
    if not (low <= float(xp.min(norm)) and float(xp.max(norm)) <= high):
        return _softmax_average_exact(r, xT)
    inv_norm = 1.0 / norm
    return E, inv_norm, yl[..., :D] * inv_norm  # ȳ_h = Σ_t P_t x_t, P = E/ℓ


def _softmax_average_exact(r: Array, xT: Array):
    """:func:`_softmax_average` with the textbook shift c = max_t S_t; r (B, H, D)."""
    xp = namespace(r)
    D = r.shape[-1]
    S = r @ xT[:, :D, :]  # (B, H, T)  S_t = r_hᵀ x_t
    S -= xp.max(S, axis=-1, keepdims=True)
    E = xp.exp(S)
    yl = E @ xT.mT  # (B, H, D + 1): [Σ_t E_t x_t, ℓ]
    inv_norm = 1.0 / yl[..., D:]
    return E, inv_norm, yl[..., :D] * inv_norm


def _query_attention_backward(dA: Array, c: QueryAttentionCache, p, config, input_grad: bool):
    """Returns (dx (B, T, D) or None, AttentionParams of gradients)."""
    xp = namespace(dA)
    B, T, D = c.x.shape
    H, K = config.n_heads, config.d_head
    dheads = dA @ p.W_O  # (B, H·K)
    dW_O = dA.mT @ c.heads  # (D, H·K)
    dy_rows = reshape(dheads @ c.V_diag, (B * H, D))  # (B·H, D)  dȳ_h = W_V,hᵀ d out_h
    dy = reshape(dy_rows, (B, H, D))
    dW_V = per_head_outer(reshape(dheads, (B, H, K)), c.y)  # Σ_b d out_h ȳ_hᵀ
    if c.inv_norm is not None:
        # dS = P ⊙ (dP − Σ_t dP_t P_t), dP_t = x_tᵀ dȳ_h, Σ_t dP_t P_t = dȳ_h · ȳ_h:
        # E ⊙ ([dȳ, −dȳ·ȳ] [x, 1]ᵀ) = ℓ dS
        minus_ones = constant(xp, (D, 1), -1.0, dA.dtype, device(dA))
        # −dȳ_h·ȳ_h (B, H, 1): a product of the (B·H, D) rows, not a reduction over D
        row = reshape((dy_rows * reshape(c.y, (B * H, D))) @ minus_ones, (B, H, 1))
        dS_l = c.E * (xp.concat([dy, row], axis=-1) @ c.xT)  # (B, H, T)
        # Σ_t dS_t x_t from [x, 1] (its last column, Σ_t dS_t = 0, is dropped): a
        # product with D + 1 columns runs faster than one with D
        dr = (dS_l @ c.xT.mT)[..., :D] * c.inv_norm  # (B, H, D)
    else:
        dS_l = dy @ c.xT[:, :D, :]  # dS = dP
        dr = dS_l @ c.x
    dq = reshape(dr, (B, H * D)) @ c.K_diag.mT  # (B, H·K)  W_K,h dr_h
    dW_K = per_head_outer(reshape(c.q, (B, H, K)), dr)  # Σ_b q_h dr_hᵀ
    scale = 1.0 / math.sqrt(K)
    dW_Q = (dq.mT @ c.x[:, -1, :]) * scale  # (H·K, D)
    grads = AttentionParams(W_Q=dW_Q, W_K=dW_K, W_V=dW_V, W_O=dW_O)
    if not input_grad:
        return None, grads
    # through ȳ (Σ_h P_t dȳ_h) and through the scores (Σ_h dS_t r_h)
    if c.inv_norm is not None:
        dx = c.E.mT @ (dy * c.inv_norm) + dS_l.mT @ (c.r * c.inv_norm)  # (B, T, D)
    else:
        dx = c.E.mT @ dy + dS_l.mT @ c.r
    dx_q = (dq @ p.W_Q) * scale  # (B, D)
    dx = xp.concat([dx[:, :-1, :], xp.expand_dims(dx[:, -1, :] + dx_q, axis=1)], axis=1)
    return dx, grads


def _full_attention(x: Array, p: AttentionParams, config: TransformerConfig):
    """Attention at every position of x (B, T, D); returns (A (B, T, D), cache).

    The scores are kept transposed, Sᵀ = k qᵀ (B, H, T keys, T queries), so that the
    maximum over the keys runs down the columns (vectorised along the queries).
    """
    xp = namespace(x)
    B, T, D = x.shape
    H, K = config.n_heads, config.d_head
    W_qkv = xp.concat([p.W_Q * (1.0 / math.sqrt(K)), p.W_K, p.W_V], axis=0)  # (3HK, D)
    qkv = reshape(reshape(x, (B * T, D)) @ W_qkv.mT, (B, T, 3, H, K))
    qkv = xp.permute_dims(qkv, (2, 0, 3, 1, 4))  # (3, B, H, T, K)
    q, k, v = qkv[0, ...], qkv[1, ...], qkv[2, ...]
    St = k @ q.mT  # (B, H, T, T)  Sᵀ: keys along axis 2, queries along axis 3; 1/√K in q
    mask = None
    if config.causal:
        visible = causal_mask(T, T, xp, device=device(x)).mT  # key j ≤ query i
        if config.attention == "softmax":
            # −inf added where a query may not see the key: exp gives 0 there
            hidden = xp.zeros(visible.shape, dtype=x.dtype, device=device(x))
            St = St + xp.where(visible, hidden, xp.full_like(hidden, -math.inf))
        else:
            mask = xp.astype(visible, x.dtype)
            St = St * mask
    if config.attention == "softmax":
        St -= xp.max(St, axis=-2, keepdims=True)  # the maximum over the keys
        E = xp.exp(St)  # Eᵀ
        ones = xp.ones((B, H, T, 1), dtype=x.dtype, device=device(x))
        v1 = xp.concat([v, ones], axis=-1)  # (B, H, T, K + 1)
        ol = E.mT @ v1  # (B, H, T, K + 1): [E v, ℓ], ℓ = Σ_keys E
        inv_norm = 1.0 / ol[..., K:]  # (B, H, T, 1)
        o = ol[..., :K] * inv_norm  # P v with P = E/ℓ
    else:
        E, inv_norm, v1 = St, None, None
        o = E.mT @ v
    heads = reshape(xp.permute_dims(o, (0, 2, 1, 3)), (B, T, H * K))
    A = reshape(reshape(heads, (B * T, H * K)) @ p.W_O.mT, (B, T, D))
    return A, FullAttentionCache(x, W_qkv, q, k, v, v1, E, inv_norm, o, heads, mask)


def _full_attention_backward(dA: Array, c: FullAttentionCache, p, config, input_grad: bool):
    """Returns (dx (B, T, D) or None, AttentionParams of gradients)."""
    xp = namespace(dA)
    B, T, D = c.x.shape
    H, K = config.n_heads, config.d_head
    HK = H * K
    dA_rows = reshape(dA, (B * T, D))
    dW_O = dA_rows.mT @ reshape(c.heads, (B * T, HK))  # (D, H·K)
    dheads = dA_rows @ p.W_O  # (B·T, H·K)
    dPv = xp.permute_dims(reshape(dheads, (B, T, H, K)), (0, 2, 1, 3))  # (B, H, T, K)
    if c.inv_norm is not None:
        # dS = P ⊙ (dP − Σ_keys dP P) with Σ_keys dP P = dPv · o, P = E/ℓ, dP = dPv vᵀ:
        # dSᵀ = Eᵀ ⊙ ([v, 1] [dPv/ℓ, −(dPv · o)/ℓ]ᵀ)
        ones = xp.ones((K, 1), dtype=dA.dtype, device=device(dA))
        row = ((dPv * c.o) @ ones) * c.inv_norm  # (B, H, T, 1): a product, not a reduction
        dPv_scaled = dPv * c.inv_norm
        dSt = c.E * (c.v1 @ xp.concat([dPv_scaled, -row], axis=-1).mT)  # (B, H, T, T)
        dv = c.E @ dPv_scaled  # Pᵀ dPv
    else:
        dSt = c.v @ dPv.mT  # dPᵀ, and P = S
        if c.mask is not None:
            dSt = dSt * c.mask
        dv = c.E @ dPv
    dq = dSt.mT @ c.k  # (B, H, T, K) gradient of the scaled queries
    dk = dSt @ c.q
    # (B, T, 3, H, K) in one copy, the layout of the fused projection's output
    dqkv = xp.stack([xp.permute_dims(a, (0, 2, 1, 3)) for a in (dq, dk, dv)], axis=2)
    dqkv = reshape(dqkv, (B * T, 3 * HK))
    dW = dqkv.mT @ reshape(c.x, (B * T, D))  # (3HK, D)
    grads = AttentionParams(
        W_Q=dW[:HK, :] * (1.0 / math.sqrt(K)), W_K=dW[HK : 2 * HK, :], W_V=dW[2 * HK :, :],
        W_O=dW_O,
    )  # fmt: skip
    if not input_grad:
        return None, grads
    return reshape(dqkv @ c.W_qkv, (B, T, D)), grads


# -- blocks ------------------------------------------------------------------------------


def _block_forward(z: Array, bp, config: TransformerConfig, query_only: bool):
    """One block on z (B, T, D); returns (out (B, Tq, D), cache)."""
    B, T, D = z.shape
    u1, ln1 = z, None
    if bp.ln1 is not None:
        u1, ln1 = _layernorm(reshape(z, (B * T, D)), bp.ln1, config.ln_eps)
        u1 = reshape(u1, (B, T, D))
    if query_only:
        A, attn = _query_attention(u1, bp.attn, config)  # (B, D)
        z_rows = z[:, -1, :]
        Tq = 1
    else:
        A, attn = _full_attention(u1, bp.attn, config)
        A = reshape(A, (B * T, D))
        z_rows = reshape(z, (B * T, D))
        Tq = T
    h = z_rows + A if config.attn_skip else A  # (B·Tq, D)
    u, ln2 = _layernorm(h, bp.ln2, config.ln_eps)
    m = bp.mlp
    hidden, act = _activation(u @ m.W1.mT + m.b1, config.activation)  # (B·Tq, M)
    out = hidden @ m.W2.mT + m.b2
    if config.mlp_skip:
        out = h + out
    cache = FastBlockCache(bp, z, ln1, attn, ln2, u, act, hidden, query_only)
    return reshape(out, (B, Tq, D)), cache


def _block_backward(dout: Array, c: FastBlockCache, config: TransformerConfig, input_grad):
    """dout (B, Tq, D); returns (dz (B, T, D) or None, BlockParams of gradients)."""
    xp = namespace(dout)
    B, T, D = c.z.shape
    bp = c.params
    d_rows = reshape(dout, (-1, D))  # (B·Tq, D)
    dhidden = d_rows @ bp.mlp.W2
    dW2 = d_rows.mT @ c.hidden
    db2 = column_sums(d_rows)
    dpre = _activation_backward(dhidden, c.pre, config.activation)
    du = dpre @ bp.mlp.W1
    dW1 = dpre.mT @ c.u
    db1 = column_sums(dpre)
    dmlp = MLPParams(W1=dW1, b1=db1, W2=dW2, b2=db2)
    if c.ln2 is not None:
        dh, dln2 = _layernorm_backward(du, c.ln2)
    else:
        dh, dln2 = du, None
    if config.mlp_skip:
        dh = dh + d_rows
    # LN1's gradients need the attention's input gradient even where the block's is not
    need_dx = input_grad or c.ln1 is not None
    if c.query_only:
        du1, dattn = _query_attention_backward(dh, c.attn, bp.attn, config, need_dx)
    else:
        du1, dattn = _full_attention_backward(
            reshape(dh, (B, T, D)), c.attn, bp.attn, config, need_dx
        )
    dln1 = None
    if c.ln1 is not None:
        du1, dln1 = _layernorm_backward(reshape(du1, (B * T, D)), c.ln1)
        du1 = reshape(du1, (B, T, D))
    if not input_grad:
        return None, _grads(bp, dattn, dmlp, dln1, dln2)
    if config.attn_skip:
        if c.query_only:
            last = xp.expand_dims(du1[:, -1, :] + dh, axis=1)
            du1 = xp.concat([du1[:, :-1, :], last], axis=1)
        else:
            du1 = du1 + reshape(dh, (B, T, D))
    return du1, _grads(bp, dattn, dmlp, dln1, dln2)


def column_sums(a: Array) -> Array:
    """Σ_r a[r, :] for rows a (R, n), as the product 1ᵀ a (a GEMV, not a reduction)."""
    ones = constant(namespace(a), (1, a.shape[0]), 1.0, a.dtype, device(a))
    return (ones @ a)[0, :]


def _grads(bp, dattn, dmlp, dln1, dln2):
    """The gradients as a record of the block's type (fields this module does not know,
    if any, keep their values: they are None for the configurations it covers)."""
    return bp._replace(attn=dattn, mlp=dmlp, ln1=dln1, ln2=dln2)


# -- the model ---------------------------------------------------------------------------


def forward_fast(
    params: ModelParams, config: TransformerConfig, tokens: Array, last_only: bool = False
) -> tuple[Array, FastCache]:
    """``model.forward(params, config, tokens, last_only=last_only)`` by the fast products.

    Returns (out, cache): out (B, T, D), or (B, 1, D) with ``last_only`` (the last block
    at the query row only). The same checks of shapes and dtypes as ``forward`` (no
    read-back of values). Raises ValueError for a configuration :func:`covers` refuses.
    """
    check_params(params, config)
    check_tokens(tokens, config, params)
    if not covers(config):
        raise ValueError(
            "forward_fast: this configuration is not covered (covers() is False);"
            " use model.forward"
        )
    L = config.n_blocks
    x = tokens
    caches = []
    for l, bp in enumerate(params.blocks):
        x, cache = _block_forward(x, bp, config, last_only and l == L - 1)
        caches.append(cache)
    return x, FastCache(config, tuple(caches), last_only)


def backward_fast(
    dout: Array, cache: FastCache, input_grad: bool = True
) -> tuple[Array | None, ModelParams]:
    """``model.backward`` for a :func:`forward_fast` cache: (dtokens, grads).

    dout (B, T, D), or (B, 1, D) after ``last_only``. ``input_grad=False`` skips the
    gradient with respect to the tokens (training does not need it) and returns None
    in its place.
    """
    config = cache.config
    grads = []
    dx = dout
    n = len(cache.blocks)
    for l in range(n - 1, -1, -1):
        dx, dblock = _block_backward(dx, cache.blocks[l], config, input_grad or l > 0)
        grads.append(dblock)
    return dx, ModelParams(blocks=tuple(reversed(grads)))


def query_loss_and_grads(params: ModelParams, config: TransformerConfig, tokens, target):
    """The training step's loss and parameter gradients, by the fast pass where it
    :func:`covers` the configuration and by the textbook pass otherwise.

        loss = (1/B) Σ_b (out[b, −1, −1] − target_b)²    (``loss.query_loss``)

    tokens (B, T, D), target (B,). Returns (loss (0-d array), grads: a ModelParams).
    """
    if not covers(config):
        from .model import backward, forward

        out, cache = forward(params, config, tokens, last_only=True, check_finite=False)
        loss, dout = query_loss(out, target)
        _, grads = backward(dout, cache, fast=True)
        return loss, grads
    out, cache = forward_fast(params, config, tokens, last_only=True)
    loss, dout = query_loss(out, target)
    _, grads = backward_fast(dout, cache, input_grad=False)
    return loss, grads
