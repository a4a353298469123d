"""von Oswald et al. (2023): one linear self-attention layer performs one step of GD.

Tokens are e_i = (x_i; y_i) ∈ R^{d+1} for the context and e_q = (x_q; y_q) for the query.
With

    W_K = W_Q = [[I_d, 0], [0, 0]],   W_V = [[0, 0], [W_0, −1]],   P = (η/n) I,

the layer e_q ← e_q + P Σ_i W_V e_i (W_K e_i)ᵀ W_Q e_q writes into the query's y-slot

    y_q + (η/n) Σ_i (W_0 x_i − y_i) x_iᵀ x_q = y_q + (W_0 − W_1) x_q,

where W_1 = W_0 − η ∇L(W_0) is one gradient step on L(W) = (1/2n) Σ_i ‖W x_i − y_i‖².
With W_0 = 0 and y_q = 0 the y-slot holds −W_1 x_q, so ŷ = −(y-slot). Exact.

In this package's attention (linear kind, one head, K = d + 1, attention skip) two
details are handled by the construction:

* the query also attends to itself. Its value is W_V e_q = (0; W_0 x_q − y_q), which
  vanishes when the query's y-slot holds the initial prediction y_q = W_0 x_q (= 0 for
  W_0 = 0, von Oswald's setting). ``von_oswald_predict`` sets it so, and reads
  ŷ = 2 W_0 x_q − (y-slot) = W_1 x_q  (ŷ = −(y-slot) for W_0 = 0);
* the scores are divided by √K: the factor √K is folded into W_O = (η/n) √K I.

Relation to the rank-1 update (Theorem 2.2): this layer followed by an MLP is a contextual
block with the attention skip. The query's value vanishes, so A(x) = 0 and the MLP input
without context is u_∅ = e_q; with context it is u_C = e_q + A(C, x). The context vector
is therefore the whole attention output at the query,

    δu = A(C, x) = (0; (W_0 − W_1) x_q) = (0; η ∇L(W_0) x_q),

the explicit GD step applied to the query, written in the y-slot. The implicit update of
any following MLP weight W is ΔW = (W δu) e_qᵀ / ‖e_q‖². For W_0 = 0 and the read-out
W = (0, …, 0, −1), (W + ΔW) e_q = W_1 x_q and ΔW = [W_1 x_q x_qᵀ / ‖x_q‖², 0]: the GD
weights projected on the query direction, the minimum-norm matrix that agrees with the
explicit step W_1 at this query. Implicit and explicit updates coincide at x_q only.

Shapes: B prompts, N = n context pairs, d input width; tokens have width d + 1.
Reference: J. von Oswald et al., "Transformers learn in-context by gradient descent",
ICML 2023, Proposition 1; docs/theory.md §6.
"""

from __future__ import annotations

import math

import numpy

from .backend import Array, namespace, resolve_dtype
from .config import TransformerConfig
from .model import forward
from .params import AttentionParams, BlockParams, MLPParams, ModelParams


def _check_W0(W0, d: int) -> numpy.ndarray:
    """W_0 as a host (1, d) matrix; None means 0."""
    if W0 is None:
        return numpy.zeros((1, d))
    W0 = numpy.asarray(W0, dtype=numpy.float64)
    if W0.shape not in ((d,), (1, d)):
        raise ValueError(f"W0 must have shape ({d},) or (1, {d}), got {W0.shape}")
    if not numpy.all(numpy.isfinite(W0)):
        raise ValueError("W0 contains NaN or infinity")
    return W0.reshape(1, d)


def _check_eta_n(eta, n_context) -> None:
    if isinstance(n_context, bool) or not isinstance(n_context, int) or n_context < 1:
        raise ValueError(f"n_context must be a positive int, got {n_context!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
        raise ValueError(f"eta must be a finite number, got {eta!r}")


def von_oswald_attention(
    d: int,
    eta: float,
    n_context: int,
    W0=None,
    dtype=numpy.float64,
    xp=None,
    device=None,
) -> tuple[AttentionParams, int]:
    """The linear-attention weights that perform one GD step; returns (params, n_heads=1).

        W_Q = W_K = [[I_d, 0], [0, 0]]   (d+1, d+1)
        W_V = [[0, 0], [W_0, −1]]        (d+1, d+1)
        W_O = (η/n) √K I_{d+1}           P = (η/n) I, times √K to cancel the 1/√K of the scores

    d: input width (tokens have width d + 1); eta: the GD step size η; n_context: n;
    W0: the initial regression weights (d,) or (1, d), default 0.
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive int, got {d!r}")
    _check_eta_n(eta, n_context)
    if xp is None:
        xp = numpy
    dtype = resolve_dtype(xp, dtype)
    D = K = d + 1
    W0 = _check_W0(W0, d)

    W_QK = numpy.zeros((K, D))
    W_QK[:d, :d] = numpy.eye(d)
    W_V = numpy.zeros((K, D))
    W_V[d, :d] = W0[0]
    W_V[d, d] = -1.0
    W_O = (eta / n_context) * math.sqrt(K) * numpy.eye(D, K)

    def put(a):
        return xp.asarray(a, dtype=dtype, device=device)

    return AttentionParams(W_Q=put(W_QK), W_K=put(W_QK), W_V=put(W_V), W_O=put(W_O)), 1


def von_oswald_model(
    d: int,
    eta: float,
    n_context: int,
    W0=None,
    dtype=numpy.float64,
    xp=None,
    device=None,
) -> tuple[TransformerConfig, ModelParams]:
    """The construction as a one-block model of this package: (config, params).

    Linear attention with the weights of :func:`von_oswald_attention`, an attention
    skip, and an MLP whose weights are all zero with an MLP skip, so the block's output
    is h = e + A(e): exactly von Oswald's layer.
    """
    attn, n_heads = von_oswald_attention(d, eta, n_context, W0, dtype, xp, device)
    config = TransformerConfig(
        d_token=d + 1,
        n_blocks=1,
        n_heads=n_heads,
        d_head=d + 1,
        d_mlp=1,
        attention="linear",
        activation="relu",
        causal=False,
        attn_skip=True,
        mlp_skip=True,
        layer_norm=False,
    )
    xp = namespace(attn.W_Q)
    zeros = xp.zeros_like
    mlp = MLPParams(
        W1=zeros(attn.W_Q[:1, :]),
        b1=zeros(attn.W_Q[0, :1]),
        W2=zeros(attn.W_Q[:, :1]),
        b2=zeros(attn.W_Q[:, 0]),
    )
    return config, ModelParams(blocks=(BlockParams(attn=attn, mlp=mlp, ln1=None, ln2=None),))


def _check_regression(context_x: Array, context_y: Array, query_x: Array) -> tuple[int, int, int]:
    """Raise a ValueError naming the argument unless the shapes agree and all is finite;
    returns (B, n, d)."""
    shape = getattr(context_x, "shape", None)
    if shape is None or len(shape) != 3 or shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"context_x must have shape (B, n, d) with n, d ≥ 1, got shape {shape}")
    B, n, d = shape
    if tuple(getattr(context_y, "shape", ())) != (B, n):
        raise ValueError(
            f"context_y must have shape {(B, n)}, got {getattr(context_y, 'shape', None)}"
        )
    if tuple(getattr(query_x, "shape", ())) != (B, d):
        raise ValueError(f"query_x must have shape {(B, d)}, got {getattr(query_x, 'shape', None)}")
    xp = namespace(context_x, context_y, query_x)
    for name, a in (("context_x", context_x), ("context_y", context_y), ("query_x", query_x)):
        if not bool(xp.all(xp.isfinite(a))):
            raise ValueError(f"{name} contains NaN or infinity")
    return B, n, d


def regression_tokens(context_x: Array, context_y: Array, query_x: Array, W0=None) -> Array:
    """Tokens [(x_1; y_1) … (x_n; y_n) (x_q; W_0 x_q)] of shape (B, n+1, d+1).

    context_x (B, n, d), context_y (B, n), query_x (B, d). The query's y-slot holds the
    initial prediction W_0 x_q (0 by default), as the construction needs.
    """
    xp = namespace(context_x, context_y, query_x)
    B, n, d = _check_regression(context_x, context_y, query_x)
    W0 = xp.asarray(_check_W0(W0, d), dtype=query_x.dtype, device=query_x.device)
    y_q = xp.matmul(query_x, xp.matrix_transpose(W0))  # (B, 1)
    context = xp.concat([context_x, xp.expand_dims(context_y, axis=-1)], axis=-1)  # (B, n, d+1)
    query = xp.expand_dims(xp.concat([query_x, y_q], axis=-1), axis=1)  # (B, 1, d+1)
    return xp.concat([context, query], axis=1)


def von_oswald_predict(tokens: Array, eta: float, W0=None) -> Array:
    """The prediction read from the query's y-slot after the von Oswald layer, (B,).

    tokens (B, n+1, d+1): n context tokens (x_i; y_i), then the query (x_q; ·). The
    query's y-slot is set to W_0 x_q (0 for W_0 = None) before the layer runs, so that
    its own value vanishes (see the module docstring); what was there is not used.
    Returns ŷ = 2 W_0 x_q − (y-slot) = W_1 x_q, i.e. −(y-slot) for W_0 = 0.
    """
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(
            f"tokens must have shape (B, n+1, d+1) with n ≥ 1 and d ≥ 1, got shape {shape}"
        )
    xp = namespace(tokens)
    B, T, D = shape
    d, n = D - 1, T - 1
    tokens = regression_tokens(tokens[:, :-1, :d], tokens[:, :-1, d], tokens[:, -1, :d], W0)
    config, params = von_oswald_model(
        d, eta, n, W0, dtype=tokens.dtype, xp=xp, device=tokens.device
    )
    out, _ = forward(params, config, tokens, last_only=True)  # (B, 1, d+1)
    y_initial = tokens[:, -1, d]  # W_0 x_q
    return 2.0 * y_initial - out[:, -1, d]


def gd_one_step_predict(
    context_x: Array, context_y: Array, query_x: Array, eta: float, W0=None
) -> Array:
    """One explicit gradient step, then predict: W_1 x_q, (B,).

        L(W) = (1/2n) Σ_i (W x_i − y_i)²,   ∇L(W_0) = (1/n) Σ_i (W_0 x_i − y_i) x_iᵀ,
        W_1 = W_0 − η ∇L(W_0).

    context_x (B, n, d), context_y (B, n), query_x (B, d); W0 (d,) or (1, d), default 0.
    """
    xp = namespace(context_x, context_y, query_x)
    B, n, d = _check_regression(context_x, context_y, query_x)
    _check_eta_n(eta, n)
    W0 = xp.asarray(_check_W0(W0, d), dtype=query_x.dtype, device=query_x.device)  # (1, d)
    residual = xp.matmul(context_x, xp.matrix_transpose(W0))[..., 0] - context_y  # (B, n)
    grad = xp.matmul(xp.expand_dims(residual, axis=1), context_x)[:, 0, :] / n  # (B, d)
    W1 = W0 - eta * grad  # (B, d)
    return xp.sum(W1 * query_x, axis=-1)
