"""von Oswald et al. (2023): one linear self-attention layer performs one step of GD.

Tokens are e_j = (x_j; y_j) ∈ R^{d+1} for the context and e_q = (x_q; y_q) for the query.
With

    W_K = W_Q = [[I_d, 0], [0, 0]],   W_V = [[0, 0], [θ_0, −1]],   W_P = (η/N) I,

the layer e_q ← e_q + W_P Σ_j W_V e_j (W_K e_j)ᵀ W_Q e_q writes into the query's y-slot

    y_q + (η/N) Σ_j (⟨θ_0, x_j⟩ − y_j) x_jᵀ x_q = y_q + ⟨θ_0 − θ_1, x_q⟩,

where θ_1 = θ_0 − η ∇L(θ_0) is one gradient step on L(θ) = (1/2N) Σ_j (⟨θ, x_j⟩ − y_j)²
(the step that :func:`minimal_icl.data.one_step_gd_predict` takes explicitly). With
θ_0 = 0 and y_q = 0 the y-slot holds −⟨θ_1, x_q⟩, so ŷ = −(y-slot). Exact.

In this package's attention (linear kind, one head, K = d + 1, attention skip) two
details are handled by the construction:

* the query also attends to itself. Its value is W_V e_q = (0; ⟨θ_0, x_q⟩ − y_q), which
  vanishes when the query's y-slot holds the initial prediction y_q = ⟨θ_0, x_q⟩ (= 0 for
  θ_0 = 0, von Oswald's setting). ``von_oswald_predict`` sets it so (with
  ``data.prompt_tokens(..., query_y)``), and reads ŷ = 2 ⟨θ_0, x_q⟩ − (y-slot) = ⟨θ_1, x_q⟩
  (ŷ = −(y-slot) for θ_0 = 0);
* the scores are divided by √K: the factor √K is folded into W_O = (η/N) √K I.

Relation to the rank-1 update (Theorem 2.2): this layer followed by an MLP is a contextual
block with the attention skip. The query's value vanishes, so A(x) = 0 and the MLP input
without context is u_∅ = e_q; with context it is u_C = e_q + A(C, x). The context vector
is therefore the whole attention output at the query,

    δu = A(C, x) = (0; ⟨θ_0 − θ_1, x_q⟩) = (0; η ⟨∇L(θ_0), x_q⟩),

the explicit GD step applied to the query, written in the y-slot. The implicit update of
any following MLP weight W is ΔW = (W δu) e_qᵀ / ‖e_q‖². For θ_0 = 0 and the read-out
W = (0, …, 0, −1), (W + ΔW) e_q = ⟨θ_1, x_q⟩ and ΔW = [⟨θ_1, x_q⟩ x_qᵀ / ‖x_q‖², 0]: the GD
weights projected on the query direction, the minimum-norm matrix that agrees with the
explicit step θ_1 at this query. Implicit and explicit updates coincide at x_q only.

Shapes: B prompts, N context pairs, d input width; tokens have width D = d + 1.
Reference: J. von Oswald et al., "Transformers learn in-context by gradient descent",
ICML 2023, Proposition 1; docs/theory.md §6.
"""

from __future__ import annotations

import math

import numpy

from .backend import Array, namespace
from .config import TransformerConfig
from .data import prompt_tokens, theta0_row
from .model import forward
from .params import AttentionParams, BlockParams, MLPParams, ModelParams
from .validation import (
    check_device,
    check_float_dtype,
    check_namespace,
    check_result_finite,
    check_von_oswald,
    check_von_oswald_tokens,
)


def von_oswald_attention(
    d: int,
    eta: float,
    n_context: int,
    theta0=None,
    dtype=numpy.float64,
    xp=None,
    device=None,
) -> tuple[AttentionParams, int]:
    """The linear-attention weights that perform one GD step; returns (params, n_heads=1).

        W_Q = W_K = [[I_d, 0], [0, 0]]   (d+1, d+1)
        W_V = [[0, 0], [θ_0, −1]]        (d+1, d+1)
        W_O = (η/N) √K I_{d+1}           W_P = (η/N) I, times √K to cancel the 1/√K of the scores

    d: input width (tokens have width d + 1); eta: the GD step size η; n_context: N;
    theta0: θ_0, the initial regression weights (d,) or (1, d), default 0.
    Raises ValueError unless d and n_context are ints ≥ 1, η is finite and ≥ 0 and
    theta0 is None or d finite numbers of shape (d,) or (1, d); TypeError for a dtype
    that is not real floating point (``minimal_icl.validation``).
    """
    d, eta, n_context = check_von_oswald(d, eta, n_context)
    xp = check_namespace(xp)
    check_device(xp, device)
    dtype = check_float_dtype(xp, dtype)
    D = K = d + 1
    theta0 = theta0_row(theta0, d)  # (1, d)

    W_QK = numpy.zeros((K, D))
    W_QK[:d, :d] = numpy.eye(d)
    W_V = numpy.zeros((K, D))
    W_V[d, :d] = theta0[0]
    W_V[d, d] = -1.0
    W_O = (eta / n_context) * math.sqrt(K) * numpy.eye(D, K)

    def put(a):
        return xp.asarray(a, dtype=dtype, device=device)

    return AttentionParams(W_Q=put(W_QK), W_K=put(W_QK), W_V=put(W_V), W_O=put(W_O)), 1


def von_oswald_model(
    d: int,
    eta: float,
    n_context: int,
    theta0=None,
    dtype=numpy.float64,
    xp=None,
    device=None,
) -> tuple[TransformerConfig, ModelParams]:
    """The construction as a one-block model of this package: (config, params).

    Linear attention with the weights of :func:`von_oswald_attention`, an attention
    skip, and an MLP whose weights are all zero with an MLP skip, so the block's output
    is h = e + A(e): exactly von Oswald's layer.
    """
    attn, n_heads = von_oswald_attention(d, eta, n_context, theta0, dtype, xp, device)
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


def von_oswald_predict(tokens: Array, eta: float, theta0=None) -> Array:
    """The prediction read from the query's y-slot after the von Oswald layer, (B,).

    tokens (B, N+1, d+1): N context tokens (x_j; y_j), then the query (x_q; ·). The
    query's y-slot is set to ⟨θ_0, x_q⟩ (0 for theta0 = None) before the layer runs, so
    that its own value vanishes (see the module docstring); what was there is not used.
    Returns ŷ = 2 ⟨θ_0, x_q⟩ − (y-slot) = ⟨θ_1, x_q⟩, i.e. −(y-slot) for θ_0 = 0: the
    prediction of :func:`minimal_icl.data.one_step_gd_predict` with the same η and θ_0.
    Raises as :func:`von_oswald_attention` for η and theta0, ValueError unless tokens are
    (B, N+1, d+1) with B, N, d ≥ 1 and finite apart from the query's y-slot (read after
    the pass, by ``forward``), TypeError unless real floating point.
    """
    check_von_oswald_tokens(tokens)
    xp = namespace(tokens)
    B, T, D = tokens.shape
    d, N = D - 1, T - 1
    query_x = tokens[:, -1, :d]  # (B, d)
    theta0_ = xp.asarray(theta0_row(theta0, d), dtype=tokens.dtype, device=tokens.device)
    with numpy.errstate(over="ignore", invalid="ignore"):  # checked just below
        y_initial = xp.sum(theta0_ * query_x, axis=-1)  # (B,)  ⟨θ_0, x_q⟩
    if theta0 is not None:  # ⟨θ_0, x_q⟩ of finite tokens overflows only for a huge θ_0
        check_result_finite(y_initial, "von_oswald_predict: ⟨θ_0, x_q⟩")
    tokens = prompt_tokens(tokens[:, :-1, :d], tokens[:, :-1, d], query_x, y_initial)
    config, params = von_oswald_model(
        d, eta, N, theta0, dtype=tokens.dtype, xp=xp, device=tokens.device
    )
    out, _ = forward(params, config, tokens, last_only=True)  # (B, 1, D)
    if theta0 is None:
        return -out[:, -1, d]
    with numpy.errstate(over="ignore", invalid="ignore"):  # checked just below
        prediction = 2.0 * y_initial - out[:, -1, d]
    return check_result_finite(prediction, "von_oswald_predict")
