"""The model's forward and backward restructured for speed: what training runs.

``model.forward`` / ``model.backward`` read like the maths, one layer at a time
(attention.py, mlp.py, layernorm.py). This module computes the same outputs and gradients
by other products, chosen for few and large array operations. It is what ``train_step``
calls; the tutorials and the theorems read the textbook layers. Four changes:

* **The query row's attention through the heads' circuits, without keys or values.** In a
  block computed at the last position only (``last_only``, Tq = 1: the last block in
  training), head h reads the tokens through two (D, D) matrices (Elhage et al. 2021);
  as in attention.py, x (B, T, D) is the layer's input (the tokens z, after LN1 with
  LayerNorm), x_t its rows and x_q its query row (not the regression input x_q,
  docs/notation.md):

      QK_h = W_Q,hᵀ W_K,h / √K:   S_t = x_qᵀ QK_h x_t = r_hᵀ x_t,   r_h = QK_hᵀ x_q (D,)
      OV_h = W_V,hᵀ W_O,hᵀ:       A = W_O (W_V,h ȳ_h)_h = Σ_h OV_hᵀ ȳ_h,   ȳ_h = Σ_t P_t x_t

  (:func:`circuits`), so no (B, T, H·K) key or value array is built: r for every head is
  one (B, D) @ (D, H·D) product, the scores (B, H, T) one (B, H, D) @ (B, D, T) product,
  the averaged tokens Σ_t E_t x_t and the softmax denominators ℓ = Σ_t E_t together one
  (B, H, T) @ (B, T, D + 1) product with [x, 1], and A one (B, H·D) @ (H·D, D) product.
  The backward is the same in reverse: dȳ_h = OV_h dA, dP_t = x_tᵀ dȳ_h,
  dr_h = Σ_t dS_t x_t, dOV_h = Σ_b ȳ_h dAᵀ, dQK_h = Σ_b x_q dr_hᵀ, and the weights'
  gradients from the circuits' by four (H, K, D) products (:func:`circuits_backward`).
* **The query row's softmax without a shift.** Any shift c gives the same weights; the
  textbook's c = max_t S_t (a maximum over the keys and a broadcast subtraction, which
  cost as much as the exponential) is replaced by c = 0 and a check of the range of
  ℓ after the fact (:func:`_softmax_average`, with the exact maximum where ℓ leaves
  [T·smallest_normal, √largest], and for arrays other than NumPy's).
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
one rounding unit: needed on CuPy for a few causal linear stacks); each attention call
within 1e-12 of the terms its gradients are summed from; NumPy on the whole grid,
array_api_strict on its pairwise covering selection. Configurations this module does
not cover (patched blocks, or a contextual layer other than attention) go to the
textbook pass: see :func:`covers`. Pure array-API code, no compiled extension;
``backend.reshape``, ``backend.permute_dims``, ``backend.device`` (NumPy's methods, not its
Python wrappers) and ``backend.constant`` (vectors of ones made once) save NumPy's per-call
overhead, which at the paper's sizes costs more than the arithmetic.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy

from .activations import activation_backward, activation_forward
from .attention import causal_mask
from .backend import Array, constant, device, namespace, permute_dims, reshape
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
    "linear") as the contextual layer, every field of the config outside ``_IMPLEMENTED``
    at its default (``contextual_layer``, and ``d_state`` too although attention does not
    read it: an attention config with d_state = 32 is the textbook pass's), and no
    patches. Anything else (a recurrent contextual layer, per-prompt patches) is the
    textbook pass's."""
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


def circuits(p: AttentionParams, n_heads: int):
    """The heads' query-key and output-value circuits of a per-head attention p.

    With W_Q,h, W_K,h, W_V,h (K, D) the rows h·K..(h+1)·K of W_Q, W_K, W_V and W_O,h
    (D, K) the columns h·K..(h+1)·K of W_O, a head's score and output read x only through

        QK_h = W_Q,hᵀ W_K,h / √K  (D, D):   S_t = x_qᵀ QK_h x_t,
        OV_h = W_V,hᵀ W_O,hᵀ      (D, D):   out = Σ_h OV_hᵀ ȳ_h,

    so at the query row r_h = QK_hᵀ x_q and A = Σ_h OV_hᵀ ȳ_h are one product each.
    Returns (QK (H, D, D), OV (H, D, D), and the per-head weights WQ, WK, WV, WOt
    (H, K, D), WOt_h = W_O,hᵀ, which their backward needs).
    """
    D = p.W_Q.shape[-1]
    H = n_heads
    K = p.W_Q.shape[0] // H
    WQ, WK, WV = (reshape(W, (H, K, D)) for W in (p.W_Q, p.W_K, p.W_V))
    WOt = permute_dims(reshape(p.W_O, (D, H, K)), (1, 2, 0))  # (H, K, D)
    QK = (WQ.mT @ WK) * (1.0 / math.sqrt(K))
    OV = WV.mT @ WOt
    return QK, OV, (WQ, WK, WV, WOt)


def circuits_backward(dQK: Array, dOV: Array, weights) -> AttentionParams:
    """The gradients of W_Q, W_K, W_V, W_O from those of the circuits (H, D, D).

    QK_h = W_Q,hᵀ W_K,h/√K:  dW_Q,h = W_K,h dQK_hᵀ/√K,  dW_K,h = W_Q,h dQK_h/√K;
    OV_h = W_V,hᵀ W_O,hᵀ:     dW_V,h = W_O,hᵀ dOV_hᵀ,   d(W_O,hᵀ) = W_V,h dOV_h.
    """
    WQ, WK, WV, WOt = weights
    H, K, D = WQ.shape
    scale = 1.0 / math.sqrt(K)
    dWQ = (WK @ dQK.mT) * scale
    dWK = (WQ @ dQK) * scale
    dWV = WOt @ dOV.mT
    dWOt = WV @ dOV
    return AttentionParams(
        W_Q=reshape(dWQ, (H * K, D)), W_K=reshape(dWK, (H * K, D)),
        W_V=reshape(dWV, (H * K, D)),
        W_O=reshape(permute_dims(dWOt, (2, 0, 1)), (D, H * K)),
    )  # fmt: skip


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
    """relu as x · [x > 0], a product with its 0/1 mask, which the backward reuses; gelu
    as ``activations``.

    The product equals max(x, 0) for every finite x (−0 instead of +0 where x < 0, which
    no later product or sum tells apart) and for NaN; only x = −∞ gives NaN where max
    gives 0. NumPy's maximum against a scalar zero takes a slower loop than a product of
    two arrays: 5.9 µs against 2.2 at (64, 128); mask and product together cost 6.0, and
    the backward's product with the mask 2.2 instead of 5.6 for comparing and casting.
    """
    if kind != "relu":
        return activation_forward(x, kind)
    xp = namespace(x)
    zero = constant(xp, (), 0.0, x.dtype, device(x))
    mask = xp.astype(x > zero, x.dtype)  # relu'(x): 1 for x > 0, 0 for x ≤ 0
    return x * mask, mask


def _activation_backward(dy: Array, cache, kind: str):
    if kind != "relu":
        return activation_backward(dy, cache)
    # the mask as a 0/1 factor: NumPy's where is three to four times slower than a product
    # (7.4 µs against 2.1 at (64, 128), one core; only a non-finite dy at x ≤ 0 would
    # tell them apart: 0 from where, NaN from the product)
    return dy * cache


# -- caches ------------------------------------------------------------------------------


class QueryAttentionCache(NamedTuple):
    """The attention of a block computed at the last position only (Tq = 1)."""

    x: Array  # (B, T, D) the attention input u1
    xT: Array  # (B, D + 1, T) [x, 1]ᵀ, C-contiguous
    R: Array  # (D, H·D)  [QK_1 … QK_H]: r = x_q R
    OV: Array  # (H·D, D)  [OV_1; …; OV_H]: A = ȳ OV
    weights: tuple  # the per-head weights (H, K, D) of :func:`circuits`
    r: Array  # (B, H, D)  r_h = QK_hᵀ x_q = W_K,hᵀ q_h/√K
    E: Array  # (B, H, T)  exp(S) (softmax; exp(S − max S) on the exact path) or S (linear)
    inv_norm: Array | None  # (B, H, 1) 1/ℓ, ℓ = Σ_t E (softmax); None (linear)
    y: Array  # (B, H, D)  ȳ_h = Σ_t P_t x_t


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
    H = config.n_heads
    QK, OV, weights = circuits(p, H)
    R = reshape(permute_dims(QK, (1, 0, 2)), (D, H * D))  # (D, H·D)
    OV = reshape(OV, (H * D, D))
    # [x, 1]ᵀ as a C-contiguous (B, D + 1, T) array: batched products with its rows run
    # at GEMM speed, and its row of ones gives the sums ℓ = Σ_t E_t as products
    xT = xp.empty((B, D + 1, T), dtype=x.dtype, device=device(x))
    xT[:, :D, :] = permute_dims(x, (0, 2, 1))
    xT[:, D, :] = 1.0
    r = reshape(x[:, -1, :] @ R, (B, H, D))  # r_h = QK_hᵀ x_q
    if config.attention == "linear":
        E = r @ xT[:, :D, :]  # (B, H, T)  S_t = r_hᵀ x_t = q_h · k_t/√K
        inv_norm = None  # the query sees every key: no causal mask at the last position
        y = E @ x
    else:
        E, inv_norm, y = _softmax_average(r, xT)
    A = reshape(y, (B, H * D)) @ OV  # (B, D)  Σ_h OV_hᵀ ȳ_h = W_O (W_V,h ȳ_h)_h
    return A, QueryAttentionCache(x, xT, R, OV, weights, r, E, inv_norm, y)


def _softmax_average(r: Array, xT: Array):
    """ȳ_h = Σ_t P_t x_t with P = softmax_t(S), S_t = r_hᵀ x_t, without a shift.

    Softmax is the same for every shift c of the scores, P = exp(S − c)/Σ_t exp(S − c);
    the textbook takes c = max_t S_t so that no exponential overflows, at the price of a
    maximum over the T keys and a subtraction on the (B, H, T) scores, which at the
    paper's sizes cost about as much as the exponential (40 µs against 43 at (64, 8, 51),
    one core). Here c = 0, and the range is checked
    after the fact instead: the batch is redone with the exact maximum
    (:func:`_softmax_average_exact`) unless every ℓ = Σ_t exp(S_t) lies in
    [T·smallest_normal, √largest]. Inside that range the weights and averages are as
    accurate as the textbook's, up to eps/2 in all:

    * precision: exp turns the absolute rounding error of a score into the same relative
      error of its weight, and the textbook's weights carry the same error of S_t (and
      that of rounding S_t − max S besides); an exp(S_t) below smallest_normal is rounded
      on the subnormal grid, by at most smallest_normal·eps/2, which moves its weight by
      at most eps/(2T) while ℓ ≥ T·smallest_normal, eps/2 in all over weights that sum
      to 1 (an absolute bound: such a weight, below 1/T, may lose relative digits that
      the textbook's keeps: measured, a weight of 1.1e-17 off by 75 %);
    * range: exp(S_t) ≤ ℓ ≤ √largest (1.3e154 in float64, 1.8e19 in float32: every
      score at most ½ ln largest = 354.9 and 44.4), so the averages Σ_t E_t x_t stay
      finite for tokens below √largest, and the backward scales by 1/ℓ before it
      multiplies by E.

    Scores of the paper model stay within ±26 over its 20,000 training steps (25.5 at
    most, float64 and float32, seed 0). The check reads two numbers
    back: free for NumPy, a synchronisation per step on a GPU, so arrays of other
    libraries take the exact maximum directly (a training step reads nothing back
    there, tests/test_errors.py).

    r (B, H, D), xT = [x, 1]ᵀ (B, D + 1, T). Returns (E (B, H, T) = exp(S), or
    exp(S − max_t S_t) where the exact path runs, 1/ℓ (B, H, 1) for that E, ȳ (B, H, D)).
    """
    xp = namespace(r)
    _, D1, T = xT.shape
    D = D1 - 1
    if type(r) is not numpy.ndarray:
        return _softmax_average_exact(r, xT)
    # an overflow here is caught by the check below and redone: no RuntimeWarning for it
    with numpy.errstate(over="ignore", invalid="ignore"):
        E = xp.exp(r @ xT[:, :D, :])  # (B, H, T)  exp(S)
        yl = E @ xT.mT  # (B, H, D + 1): [Σ_t E_t x_t, ℓ]
    norm = yl[..., D:]  # (B, H, 1)  ℓ
    low, high = _norm_range(xp, r.dtype, T)
    # NaN fails both comparisons: a non-finite score also takes the exact path. (The
    # ndarray methods: xp.min's Python wrapper would double the check's cost.)
    if not (low <= float(norm.min()) and float(norm.max()) <= high):
        return _softmax_average_exact(r, xT)
    inv_norm = 1.0 / norm
    return E, inv_norm, yl[..., :D] * inv_norm  # ȳ_h = Σ_t P_t x_t, P = E/ℓ


@functools.lru_cache(maxsize=32)
def _norm_range(xp, dtype, T: int) -> tuple[float, float]:
    """[T·smallest_normal, √largest] of the dtype: the ℓ that :func:`_softmax_average`
    keeps."""
    info = xp.finfo(dtype)
    return T * float(info.smallest_normal), math.sqrt(float(info.max))


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
    B, _, D = c.x.shape
    H = config.n_heads
    y_rows = reshape(c.y, (B, H * D))
    dy_rows = dA @ c.OV.mT  # (B, H·D)  dȳ_h = OV_h dA
    dOV = y_rows.mT @ dA  # (H·D, D)  Σ_b ȳ_h dAᵀ
    dy = reshape(dy_rows, (B, H, D))
    if c.inv_norm is not None:
        # dS = P ⊙ (dP − Σ_t dP_t P_t), dP_t = x_tᵀ dȳ_h, Σ_t dP_t P_t = dȳ_h · ȳ_h, P = E/ℓ:
        # dS = E ⊙ ([dȳ, −dȳ·ȳ]/ℓ [x, 1]ᵀ), scaled by 1/ℓ before E (nothing ℓ-sized)
        minus_ones = constant(xp, (D, 1), -1.0, dA.dtype, device(dA))
        # −dȳ_h·ȳ_h (B, H, 1): a product of the (B·H, D) rows, not a reduction over D
        row = reshape(reshape(dy_rows * y_rows, (B * H, D)) @ minus_ones, (B, H, 1))
        dyl = xp.concat([dy, row], axis=-1)  # (B, H, D + 1)
        dyl *= c.inv_norm  # in place, as below: fresh arrays, one allocation fewer each
        dS = dyl @ c.xT  # (B, H, T)
        dS *= c.E
        # Σ_t dS_t x_t from [x, 1] (its last column, Σ_t dS_t = 0, is dropped): a
        # product with D + 1 columns runs faster than one with D
        dr = (dS @ c.xT.mT)[..., :D]  # (B, H, D)
    else:
        dS = dy @ c.xT[:, :D, :]  # dS = dP
        dr = dS @ c.x
    dr_rows = reshape(dr, (B, H * D))
    x_q = c.x[:, -1, :]
    dR = x_q.mT @ dr_rows  # (D, H·D)
    dQK = permute_dims(reshape(dR, (D, H, D)), (1, 0, 2))  # (H, D, D)
    grads = circuits_backward(dQK, reshape(dOV, (H, D, D)), c.weights)
    if not input_grad:
        return None, grads
    # through ȳ (Σ_h P_t dȳ_h) and through the scores (Σ_h dS_t r_h)
    if c.inv_norm is not None:
        dx = c.E.mT @ dyl[..., :D] + dS.mT @ c.r  # (B, T, D)
    else:
        dx = c.E.mT @ dy + dS.mT @ c.r
    dx_q = dr_rows @ c.R.mT  # (B, D)  r = x_q R
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
    qkv = permute_dims(qkv, (2, 0, 3, 1, 4))  # (3, B, H, T, K)
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
    heads = reshape(permute_dims(o, (0, 2, 1, 3)), (B, T, H * K))
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
    dPv = permute_dims(reshape(dheads, (B, T, H, K)), (0, 2, 1, 3))  # (B, H, T, K)
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
    dqkv = xp.stack([permute_dims(a, (0, 2, 1, 3)) for a in (dq, dk, dv)], axis=2)
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
    pre = u @ m.W1.mT
    pre += m.b1  # in place: the product's fresh array
    hidden, act = _activation(pre, config.activation)  # (B·Tq, M)
    out = hidden @ m.W2.mT
    out += m.b2
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
    return _forward(params, config, tokens, last_only)


def _forward(params: ModelParams, config: TransformerConfig, tokens: Array, last_only: bool):
    """:func:`forward_fast` after its checks."""
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
    check_params(params, config)  # forward_fast's checks, with covers() asked once
    check_tokens(tokens, config, params)
    out, cache = _forward(params, config, tokens, last_only=True)
    loss, dout = query_loss(out, target)
    _, grads = backward_fast(dout, cache, input_grad=False)
    return loss, grads
