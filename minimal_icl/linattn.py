"""How linear attention acquires in-context learning: the models, the data, the predictions.

Zhang, Singh, Latham & Saxe, "Training dynamics of in-context learning in linear
attention", ICML 2025, arXiv:2501.16265 (reference code github.com/yedizhang/linattn-icl);
docs/theory.md §9 states the results. Symbols follow docs/notation.md: d is the
input dimension (the paper's D), the token width is d + 1, N context pairs, H heads.

Tokens are the COLUMNS of

    X = [x_1 .. x_N x_q; y_1 .. y_N 0] ∈ ℝ^{(d+1)×(N+1)},     G = X Xᵀ / N  ((d+1)×(d+1)),

and the prediction ŷ is the bottom-right entry of the layer's output. Two parametrizations:

    merged key-query   ATTN_M(X) = X + Σ_i W^V_i G W^KQ_i X
    separate, rank R   ATTN_S(X) = X + Σ_i W^V_i G W^K_iᵀ W^Q_i X,   W^K_i, W^Q_i ∈ ℝ^{R×(d+1)}

(R plays the role of the head width K of the notation table). The package follows the
paper's 1/N; the reference code leaves it out (its weights differ by a constant factor,
N^{1/2} for ATTN_M and N^{1/3} for ATTN_S, and its learning rates by N and N^{2/3}).

Write the bottom row of W^V_i as (v̄_iᵀ, v_i) and the first d columns of W^KQ_i as
[U_i; ū_iᵀ]. With v̄_i = 0 and ū_i = 0 (the paper's zero-initialised entries)

    ŷ = Σ_i v_i βᵀ U_i x_q = w₂ᵀ W₁ z,   β = (1/N) Σ_n y_n x_n,   z = vec(β x_qᵀ) ∈ ℝ^{d²},

a two-layer linear network on a cubic feature (``cubic_feature``, ``merged_to_cubic``).
For ATTN_S the zero-initialised entries are v̄_i and the key's y-entry, and the
effective matrix is Σ_i v_i K̄_iᵀ Q̄_i (K̄, Q̄ the first d columns of W^K, W^Q).

The prediction depends on the data only through the features φ = G ⊗ x_q:

    ŷ = ⟨T, G ⊗ x_q⟩,   T[a, b, c] = Σ_i W^V_i[d, a] M_i[b, c],   M_i = first d columns of
                                      W^KQ_i (ATTN_M) or of W^K_iᵀ W^Q_i (ATTN_S),

so the mean squared error over a fixed set of sequences is a quadratic in the
(d+1)²d-entry tensor T with three precomputed statistics (``FeatureStatistics``), and
a step of full-batch gradient descent costs the same for any number P of sequences,
O(F²) with F = (d+1)²d, once the statistics are computed (one pass, O(P F²))
(``train_gd``; equal to the per-sequence forward and backward, ``per_sequence_gd``).

The loss is the mean squared error without ½, L = mean (y_q − ŷ)², as in the reference
code (nn.MSELoss). Data follow the paper: x ~ N(0, Λ), w ~ N(0, I_d) fresh for every
sequence; the reference code also centres x over the training set and whitens the task
vectors empirically, which the package does not do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy

from .validation import (
    check_bool,
    check_float_array,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_seed,
    host_real_array,
)

__all__ = [
    "Covariance",
    "CubicParams",
    "FeatureStatistics",
    "MergedParams",
    "SeparateParams",
    "Sequences",
    "Trajectory",
    "converged_predictor",
    "covariance",
    "cubic_feature",
    "cubic_forward",
    "cubic_backward",
    "effective_matrix",
    "feature_statistics",
    "init_merged",
    "init_separate",
    "loss_from_statistics",
    "merged_backward",
    "merged_forward",
    "merged_to_cubic",
    "pcr_matrix",
    "per_sequence_gd",
    "plateau_losses",
    "prediction",
    "predictor_loss",
    "separate_backward",
    "separate_forward",
    "sequences",
    "squared_error",
    "statistics_gradients",
    "train_gd",
    "zero_block_mask",
]


# -- parameters --------------------------------------------------------------------------


class MergedParams(NamedTuple):
    """ATTN_M's weights, H heads, token width D = d + 1."""

    W_V: numpy.ndarray  # (H, D, D)  value
    W_KQ: numpy.ndarray  # (H, D, D) merged key-query


class SeparateParams(NamedTuple):
    """ATTN_S's weights, H heads of rank R, token width D = d + 1."""

    W_V: numpy.ndarray  # (H, D, D)  value
    W_K: numpy.ndarray  # (H, R, D)  key
    W_Q: numpy.ndarray  # (H, R, D)  query


class CubicParams(NamedTuple):
    """The two-layer linear network ŷ = w₂ᵀ W₁ z on the cubic feature z (ℝ^{d²})."""

    W1: numpy.ndarray  # (H, d²)
    w2: numpy.ndarray  # (H,)


def _check_record(name: str, value, kinds: tuple, made_by: str) -> None:
    """A TypeError naming ``name`` unless ``value`` is one of the record types ``kinds``."""
    if not isinstance(value, kinds):
        raise TypeError(
            f"{name} must be a {' or '.join(k.__name__ for k in kinds)} ({made_by}), got"
            f" {type(value).__name__}"
        )


def _check_params(params, kinds: tuple = (MergedParams, SeparateParams),
                  name: str = "params") -> int:
    """The weights of one of ``kinds`` with the shapes of their parametrization, real
    floating point; returns d. MergedParams: W_V, W_KQ (H, D, D); SeparateParams: W_V
    (H, D, D), W_K and W_Q (H, R, D); CubicParams: W1 (H, d²), w2 (H,); D = d + 1 ≥ 2."""
    makers = {MergedParams: "init_merged", SeparateParams: "init_separate",
              CubicParams: "merged_to_cubic"}
    _check_record(name, params, kinds, " or ".join(makers[k] for k in kinds))
    for field, value in zip(params._fields, params):
        check_float_array(f"{name}.{field}", value)
    if isinstance(params, CubicParams):
        H, F = params.W1.shape if params.W1.ndim == 2 else (None, None)
        d = math.isqrt(F) if F else 0
        if H is None or H < 1 or d < 1 or d * d != F or params.w2.shape != (H,):
            raise ValueError(
                f"{name}: CubicParams needs W1 (H, d²) and w2 (H,), got shapes"
                f" {params.W1.shape} and {params.w2.shape}"
            )
        return d
    shape = params.W_V.shape
    if len(shape) != 3 or shape[0] < 1 or shape[1] != shape[2] or shape[1] < 2:
        raise ValueError(f"{name}.W_V must have shape (H, d+1, d+1) with H, d ≥ 1, got {shape}")
    H, D = shape[0], shape[1]
    if isinstance(params, MergedParams):
        wanted = {"W_KQ": (H, D, D)}
    else:
        R = params.W_K.shape[1] if params.W_K.ndim == 3 else 0
        if R < 1:
            raise ValueError(f"{name}.W_K must have shape (H, R, d+1) = ({H}, R, {D}) with"
                             f" R ≥ 1, got {params.W_K.shape}")
        wanted = {"W_K": (H, R, D), "W_Q": (H, R, D)}
    for field, want in wanted.items():
        got = getattr(params, field).shape
        if got != want:
            raise ValueError(f"{name}.{field} has shape {got}, W_V's shape {shape} needs {want}")
    return D - 1


def _check_statistics(name: str, stats, d: int) -> None:
    """FeatureStatistics of sequences in dimension d: second (F, F), cross (F,), F = (d+1)² d."""
    _check_record(name, stats, (FeatureStatistics,), "feature_statistics")
    F = (d + 1) * (d + 1) * d
    for field, want in (("second", (F, F)), ("cross", (F,))):
        got = getattr(getattr(stats, field), "shape", None)
        if got != want:
            raise ValueError(
                f"{name}.{field} has shape {got}, weights of d = {d} need {want} (F = (d+1)² d)"
            )


def _check_sequences(name: str, data) -> None:
    """Sequences: X (P, d+1, N+1) with P, d, N ≥ 1 and y_query (P,), real floating point."""
    _check_record(name, data, (Sequences,), "sequences")
    shape = getattr(data.X, "shape", None)
    if shape is None or len(shape) != 3 or shape[0] < 1 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(f"{name}.X must have shape (P, d+1, N+1) with P, d, N ≥ 1, got {shape}")
    if getattr(data.y_query, "shape", None) != (shape[0],):
        raise ValueError(
            f"{name}.y_query must have shape (P,) = ({shape[0]},), got"
            f" {getattr(data.y_query, 'shape', type(data.y_query).__name__)}"
        )
    check_float_array(f"{name}.X", data.X)
    check_float_array(f"{name}.y_query", data.y_query)


def _check_dout(dout, cache, kind, made_by: str) -> None:
    """A backward's arguments: the cache of ``made_by`` and dout of its output's shape."""
    _check_record("cache", cache, (kind,), f"what {made_by} returns")
    if getattr(dout, "shape", None) != cache.X.shape:
        raise ValueError(f"dout must have the output's shape {cache.X.shape}, got"
                         f" {getattr(dout, 'shape', type(dout).__name__)}")
    check_float_array("dout", dout)


def _check_square(name: str, a) -> int:
    """d, or a ValueError naming ``name`` unless ``a`` is a finite (d, d) real floating
    array (a small host matrix: its values are read)."""
    shape = getattr(a, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"{name} must be a square (d, d) array, got"
                         f" {type(a).__name__ if shape is None else shape}")
    check_float_array(name, a)
    if not numpy.all(numpy.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinity")
    return shape[0]


def _check_eigenvalues(eigenvalues, d: int | None = None) -> numpy.ndarray:
    """The eigenvalues of a covariance as a float64 array sorted in decreasing order, or an
    error naming them: a TypeError for complex numbers (the imaginary part would be
    dropped), booleans or text, a ValueError unless they are (d of) finite positive
    numbers in one axis."""
    want = "a non-empty list of" if d is None else f"{d}"
    lam = numpy.sort(host_real_array("eigenvalues", eigenvalues))[::-1]
    if (lam.ndim != 1 or lam.size == 0 or (d is not None and lam.shape != (d,))
            or not numpy.all((lam > 0) & numpy.isfinite(lam))):
        raise ValueError(f"eigenvalues must be {want} finite positive numbers, got"
                         f" {eigenvalues!r}")
    return lam


def _check_losses_finite(loss: float, epoch: int, lr: float) -> None:
    """A ValueError naming the epoch where gradient descent diverged (the loss is not
    finite): too large a learning rate, in every case met so far."""
    if not numpy.isfinite(loss):
        raise ValueError(f"gradient descent diverged at epoch {epoch}: the training loss is"
                         f" {loss}; lower the learning rate (lr = {lr:g})")


def init_merged(d: int, n_heads: int, scale: float, seed: int = 0) -> MergedParams:
    """ATTN_M's initial weights: entries ~ N(0, scale²), then v̄_i = 0 and ū_i = 0.

    v̄_i = W_V[i, d, :d] (the value's bottom row without its last entry) and
    ū_i = W_KQ[i, d, :d] (the last row of the first d columns) are the paper's
    zero-initialised entries. The standard deviation ``scale`` per entry is the reference
    code's convention for this model. Returns (H, d+1, d+1) arrays, float64.
    """
    d, H = check_positive_int("d", d), check_positive_int("n_heads", n_heads)
    scale = check_positive_float("scale", scale)
    rng = numpy.random.default_rng(check_seed(seed))
    D = d + 1
    W_V = scale * rng.standard_normal((H, D, D))
    W_KQ = scale * rng.standard_normal((H, D, D))
    W_V[:, d, :d] = 0.0  # v̄_i
    W_KQ[:, d, :d] = 0.0  # ū_i
    return MergedParams(W_V, W_KQ)


def init_separate(d: int, n_heads: int, rank: int, scale: float, seed: int = 0) -> SeparateParams:
    """ATTN_S's initial weights: each weight's entries ~ N(0, scale²/numel), numel its
    number of entries over all heads (H R (d+1) for W_K and W_Q, H (d+1)² for W_V: the
    reference code's convention), then the key's y-entry W_K[i, :, d] = 0 and v̄_i = 0.
    """
    d, H = check_positive_int("d", d), check_positive_int("n_heads", n_heads)
    R = check_positive_int("rank", rank)
    scale = check_positive_float("scale", scale)
    rng = numpy.random.default_rng(check_seed(seed))
    D = d + 1
    W_V = scale / numpy.sqrt(H * D * D) * rng.standard_normal((H, D, D))
    W_K = scale / numpy.sqrt(H * R * D) * rng.standard_normal((H, R, D))
    W_Q = scale / numpy.sqrt(H * R * D) * rng.standard_normal((H, R, D))
    W_K[:, :, d] = 0.0  # the key's y-entry
    W_V[:, d, :d] = 0.0  # v̄_i
    return SeparateParams(W_V, W_K, W_Q)


def zero_block_mask(params):
    """Ones on every entry, zeros on the paper's zero-initialised entries (same record).

    Multiplying a gradient by this mask keeps those entries at zero during training
    (the equivalence with the cubic-feature network needs it exactly; the paper's
    population gradient keeps them at zero, a finite training set does not).
    """
    _check_params(params)
    D = params.W_V.shape[-1]
    d = D - 1
    mask = type(params)(*(numpy.ones_like(w) for w in params))
    mask.W_V[:, d, :d] = 0.0
    if isinstance(params, MergedParams):
        mask.W_KQ[:, d, :d] = 0.0
    else:
        mask.W_K[:, :, d] = 0.0
    return mask


# -- the layers, textbook version: one sequence at a time (batched) ----------------------


class MergedCache(NamedTuple):
    X: numpy.ndarray  # (B, D, T)     the tokens, as columns
    G: numpy.ndarray  # (B, D, D)     X Xᵀ / N
    KQX: numpy.ndarray  # (B, H, D, T) W^KQ_i X
    A: numpy.ndarray  # (B, H, D, T)   G W^KQ_i X
    params: MergedParams


class SeparateCache(NamedTuple):
    X: numpy.ndarray  # (B, D, T)
    G: numpy.ndarray  # (B, D, D)
    QX: numpy.ndarray  # (B, H, R, T)  W^Q_i X
    KQX: numpy.ndarray  # (B, H, D, T) W^K_iᵀ W^Q_i X
    A: numpy.ndarray  # (B, H, D, T)   G W^K_iᵀ W^Q_i X
    params: SeparateParams


def _check_tokens(X, params) -> None:
    if hasattr(X, "shape") and not isinstance(X, numpy.ndarray):
        raise TypeError(f"X must be a NumPy array (this module runs on NumPy only), got "
                        f"{type(X).__module__}.{type(X).__name__}")
    if not isinstance(X, numpy.ndarray) or X.ndim != 3:
        raise ValueError(f"X must be a (B, d+1, N+1) array of tokens as columns, got "
                         f"{getattr(X, 'shape', type(X).__name__)}")
    check_float_array("X", X)
    D = params.W_V.shape[-1]
    if X.shape[1] != D or X.shape[2] < 2:
        raise ValueError(f"X has shape {X.shape}: expected (B, {D}, N+1) with N ≥ 1 for "
                         f"weights of token width {D}")


def merged_forward(X: numpy.ndarray, params: MergedParams):
    """ATTN_M(X) = X + Σ_i W^V_i (X Xᵀ/N) W^KQ_i X, for a batch of sequences.

    X: (B, d+1, N+1) tokens as columns, the query last with y-entry 0. Returns
    (out (B, d+1, N+1), cache); the prediction is out[:, d, N] (``prediction``).
    Reference: Zhang et al. 2025, eq. for ATTN_M (with the paper's 1/N).
    """
    _check_params(params, (MergedParams,))
    _check_tokens(X, params)
    N = X.shape[2] - 1
    G = X @ numpy.swapaxes(X, 1, 2) / N  # (B, D, D)
    KQX = params.W_KQ[None] @ X[:, None]  # (B, H, D, T)
    A = G[:, None] @ KQX  # (B, H, D, T)
    out = X + numpy.sum(params.W_V[None] @ A, axis=1)  # (B, D, T)
    return out, MergedCache(X, G, KQX, A, params)


def merged_backward(dout: numpy.ndarray, cache: MergedCache):
    """The gradients of merged_forward: (dX, MergedParams of dW_V, dW_KQ), for dout
    (B, d+1, N+1) the gradient of the loss with respect to the output.

    With A_i = G W^KQ_i X and dA_i = W^V_iᵀ dout:
        dW^V_i = Σ_b dout A_iᵀ,   dW^KQ_i = Σ_b Gᵀ dA_i Xᵀ,   dG = Σ_i dA_i (W^KQ_i X)ᵀ,
        dX = dout + Σ_i W^KQ_iᵀ Gᵀ dA_i + (dG + dGᵀ) X / N.
    Gradient-checked in tests/test_linattn.py.
    """
    _check_dout(dout, cache, MergedCache, "merged_forward")
    X, G, KQX, A, params = cache
    N = X.shape[2] - 1
    # forward: out = X + Σ_i W^V_i A_i
    dX = dout.copy()
    dW_V = numpy.sum(dout[:, None] @ numpy.swapaxes(A, 2, 3), axis=0)  # (H, D, D)
    dA = numpy.swapaxes(params.W_V, 1, 2)[None] @ dout[:, None]  # (B, H, D, T)
    # forward: A_i = G KQX_i
    dG = numpy.sum(dA @ numpy.swapaxes(KQX, 2, 3), axis=1)  # (B, D, D)
    dKQX = numpy.swapaxes(G, 1, 2)[:, None] @ dA  # (B, H, D, T)
    # forward: KQX_i = W^KQ_i X
    dW_KQ = numpy.sum(dKQX @ numpy.swapaxes(X, 1, 2)[:, None], axis=0)  # (H, D, D)
    dX += numpy.sum(numpy.swapaxes(params.W_KQ, 1, 2)[None] @ dKQX, axis=1)
    # forward: G = X Xᵀ / N
    dX += (dG + numpy.swapaxes(dG, 1, 2)) @ X / N
    return dX, MergedParams(dW_V, dW_KQ)


def separate_forward(X: numpy.ndarray, params: SeparateParams):
    """ATTN_S(X) = X + Σ_i W^V_i (X Xᵀ/N) W^K_iᵀ W^Q_i X, for a batch of sequences.

    X: (B, d+1, N+1) tokens as columns. Returns (out (B, d+1, N+1), cache).
    Reference: Zhang et al. 2025, eq. for ATTN_S (with the paper's 1/N).
    """
    _check_params(params, (SeparateParams,))
    _check_tokens(X, params)
    N = X.shape[2] - 1
    G = X @ numpy.swapaxes(X, 1, 2) / N  # (B, D, D)
    QX = params.W_Q[None] @ X[:, None]  # (B, H, R, T)
    KQX = numpy.swapaxes(params.W_K, 1, 2)[None] @ QX  # (B, H, D, T)
    A = G[:, None] @ KQX  # (B, H, D, T)
    out = X + numpy.sum(params.W_V[None] @ A, axis=1)  # (B, D, T)
    return out, SeparateCache(X, G, QX, KQX, A, params)


def separate_backward(dout: numpy.ndarray, cache: SeparateCache):
    """The gradients of separate_forward: (dX, SeparateParams of dW_V, dW_K, dW_Q).

    As ``merged_backward`` with W^KQ_i = W^K_iᵀ W^Q_i: for dKQX_i = Gᵀ dA_i,
        dW^K_i = Σ_b (W^Q_i X) dKQX_iᵀ,   dW^Q_i = Σ_b W^K_i dKQX_i Xᵀ,
        dX = dout + Σ_i W^Q_iᵀ W^K_i dKQX_i + (dG + dGᵀ) X / N.
    Gradient-checked in tests/test_linattn.py.
    """
    _check_dout(dout, cache, SeparateCache, "separate_forward")
    X, G, QX, KQX, A, params = cache
    N = X.shape[2] - 1
    # forward: out = X + Σ_i W^V_i A_i
    dX = dout.copy()
    dW_V = numpy.sum(dout[:, None] @ numpy.swapaxes(A, 2, 3), axis=0)  # (H, D, D)
    dA = numpy.swapaxes(params.W_V, 1, 2)[None] @ dout[:, None]  # (B, H, D, T)
    # forward: A_i = G KQX_i
    dG = numpy.sum(dA @ numpy.swapaxes(KQX, 2, 3), axis=1)  # (B, D, D)
    dKQX = numpy.swapaxes(G, 1, 2)[:, None] @ dA  # (B, H, D, T)
    # forward: KQX_i = W^K_iᵀ QX_i
    dW_K = numpy.sum(QX @ numpy.swapaxes(dKQX, 2, 3), axis=0)  # (H, R, D)
    dQX = params.W_K[None] @ dKQX  # (B, H, R, T)
    # forward: QX_i = W^Q_i X
    dW_Q = numpy.sum(dQX @ numpy.swapaxes(X, 1, 2)[:, None], axis=0)  # (H, R, D)
    dX += numpy.sum(numpy.swapaxes(params.W_Q, 1, 2)[None] @ dQX, axis=1)
    # forward: G = X Xᵀ / N
    dX += (dG + numpy.swapaxes(dG, 1, 2)) @ X / N
    return dX, SeparateParams(dW_V, dW_K, dW_Q)


def prediction(out: numpy.ndarray) -> numpy.ndarray:
    """ŷ: the bottom-right entry of each output, out[:, d, N]. (B,)."""
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(
            "out must be a layer's output (B, d+1, N+1) with d, N ≥ 1 (merged_forward,"
            f" separate_forward), got {type(out).__name__ if shape is None else shape}"
        )
    return out[:, -1, -1]


def squared_error(y_hat: numpy.ndarray, y_query: numpy.ndarray):
    """L = mean_b (ŷ_b − y_q,b)² (no ½) and dL/dŷ = 2 (ŷ − y_q)/B."""
    shape = getattr(y_hat, "shape", None)
    if shape is None or len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"y_hat must have shape (B,) with B ≥ 1, got"
                         f" {type(y_hat).__name__ if shape is None else shape}")
    if getattr(y_query, "shape", None) != shape:
        raise ValueError(f"y_query must have y_hat's shape {shape}, got"
                         f" {getattr(y_query, 'shape', type(y_query).__name__)}")
    r = y_hat - y_query
    return float(numpy.mean(r * r)), 2.0 * r / r.shape[0]


# -- the equivalent two-layer network on the cubic feature -------------------------------


def cubic_feature(X: numpy.ndarray) -> numpy.ndarray:
    """z = vec(β x_qᵀ) (row-major), β = (1/N) Σ_n y_n x_n. X: (B, d+1, N+1) -> (B, d²).

    Cubic in the data (β is quadratic, x_q linear); Zhang et al. 2025, section on ATTN_M.
    """
    if not isinstance(X, numpy.ndarray) or X.ndim != 3 or X.shape[2] < 2:
        raise ValueError(f"X must be an array (B, d+1, N+1) with N ≥ 1 context columns, got"
                         f" {getattr(X, 'shape', type(X).__name__)}")
    N = X.shape[2] - 1
    beta = X[:, :-1, :-1] @ X[:, -1, :-1, None] / N  # (B, d, 1)
    z = beta @ X[:, None, :-1, -1]  # (B, d, d): β x_qᵀ
    return z.reshape(X.shape[0], -1)


def cubic_forward(z: numpy.ndarray, params: CubicParams):
    """ŷ = w₂ᵀ W₁ z per sequence. z: (B, d²). Returns (ŷ (B,), cache)."""
    d = _check_params(params, (CubicParams,))
    shape = getattr(z, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] != d * d:
        raise ValueError(f"z must have shape (B, d²) = (B, {d * d}) (cubic_feature), got"
                         f" {type(z).__name__ if shape is None else shape}")
    check_float_array("z", z)
    h = z @ params.W1.T  # (B, H)
    return h @ params.w2, (z, h, params)


def cubic_backward(dy: numpy.ndarray, cache) -> CubicParams:
    """Gradients of cubic_forward for dy = dL/dŷ (B,)."""
    if not (isinstance(cache, tuple) and len(cache) == 3 and isinstance(cache[2], CubicParams)):
        raise TypeError(f"cache must be the cache that cubic_forward returned, got"
                        f" {type(cache).__name__}")
    if getattr(dy, "shape", None) != (cache[0].shape[0],):
        raise ValueError(f"dy must have shape (B,) = ({cache[0].shape[0]},), got"
                         f" {getattr(dy, 'shape', type(dy).__name__)}")
    z, h, params = cache
    # forward: ŷ = h w₂
    dw2 = h.T @ dy  # (H,)
    dh = dy[:, None] * params.w2[None]  # (B, H)
    # forward: h = z W₁ᵀ
    dW1 = dh.T @ z  # (H, d²)
    return CubicParams(dW1, dw2)


def merged_to_cubic(params: MergedParams) -> CubicParams:
    """The corresponding cubic-network weights: rows of W₁ = vec(U_i)ᵀ, w₂ = (v_1..v_H),
    U_i = W^KQ_i[:d, :d], v_i = W^V_i[d, d]. Exact when v̄_i = ū_i = 0."""
    d = _check_params(params, (MergedParams,))
    H = params.W_V.shape[0]
    return CubicParams(params.W_KQ[:, :d, :d].reshape(H, d * d).copy(),
                       params.W_V[:, d, d].copy())


# -- data --------------------------------------------------------------------------------


class Covariance(NamedTuple):
    """Λ = Q diag(λ) Qᵀ, eigenvalues in decreasing order."""

    Lambda: numpy.ndarray  # (d, d)
    eigenvalues: numpy.ndarray  # (d,) λ_1 ≥ … ≥ λ_d
    eigenvectors: numpy.ndarray  # (d, d) columns e_1..e_d, in the same order


class Sequences(NamedTuple):
    """P in-context regression sequences, tokens as columns."""

    X: numpy.ndarray  # (P, d+1, N+1) [x_1..x_N x_q; y_1..y_N 0]
    y_query: numpy.ndarray  # (P,) y_q = wᵀ x_q


def covariance(d: int, seed: int = 0, eigenvalues=None) -> Covariance:
    """Λ = Q diag(λ) Qᵀ with Q a random orthogonal matrix, Haar-distributed (QR of a
    Gaussian matrix, signs fixed; det Q = ±1, so not always a rotation).

    Default λ ∝ (d, d−1, .., 1) normalised so that tr Λ = 1 (the paper's and the code's
    default). Given ``eigenvalues``, they are used as they are (sorted decreasing).
    """
    d = check_positive_int("d", d)
    rng = numpy.random.default_rng(check_seed(seed))
    if eigenvalues is None:
        lam = numpy.arange(d, 0, -1, dtype=numpy.float64)
        lam /= lam.sum()
    else:
        lam = _check_eigenvalues(eigenvalues, d)
    Q, Rm = numpy.linalg.qr(rng.standard_normal((d, d)))
    Q = Q * numpy.sign(numpy.diag(Rm))  # Haar-distributed on the orthogonal group
    return Covariance(Q @ numpy.diag(lam) @ Q.T, lam, Q)


def sequences(n_sequences: int, n_context: int, cov: Covariance, seed: int = 0) -> Sequences:
    """x ~ N(0, Λ) for the N context inputs and the query, w ~ N(0, I_d) per sequence,
    y = wᵀ x, the query's y-entry set to 0. Float64."""
    P = check_positive_int("n_sequences", n_sequences)
    N = check_positive_int("n_context", n_context)
    _check_record("cov", cov, (Covariance,), "covariance")
    rng = numpy.random.default_rng(check_seed(seed))
    d = cov.eigenvalues.shape[0]
    root = cov.eigenvectors * numpy.sqrt(cov.eigenvalues)  # Λ^{1/2} Q: root rootᵀ = Λ
    x = root @ rng.standard_normal((P, d, N + 1))  # (P, d, N+1)
    w = rng.standard_normal((P, d))
    y = numpy.einsum("pd,pdt->pt", w, x)  # (P, N+1)
    X = numpy.concatenate([x, y[:, None, :]], axis=1)
    y_query = X[:, d, N].copy()
    X[:, d, N] = 0.0
    return Sequences(X, y_query)


# -- the analytic predictions ------------------------------------------------------------


def converged_predictor(Lambda: numpy.ndarray, n_context: int) -> numpy.ndarray:
    """Γ⁻¹ = (Λ + (Λ + tr Λ I)/N)⁻¹: the matrix of the global minimum ŷ = βᵀ Γ⁻¹ x_q
    (Zhang, Frei & Bartlett 2024; both parametrizations converge to it)."""
    d = _check_square("Lambda", Lambda)
    N = check_positive_int("n_context", n_context)
    try:
        return numpy.linalg.inv(Lambda + (Lambda + numpy.trace(Lambda) * numpy.eye(d)) / N)
    except numpy.linalg.LinAlgError:
        raise ValueError(
            "converged_predictor: Γ = Λ + (Λ + tr Λ I)/N is singular: Lambda must be a"
            " covariance (positive semi-definite with tr Λ > 0)"
        ) from None


def plateau_losses(eigenvalues, n_context: int) -> numpy.ndarray:
    """L(M_m) = tr Λ − Σ_{d' ≤ m} λ_d' / (1 + (1 + tr Λ/λ_d')/N), m = 0..d, (d+1,).

    The loss of principal component regression on the top m eigenvectors (ATTN_S's
    plateaus; eigenvalues taken in decreasing order). Zhang et al. 2025, re-derived in
    docs/theory.md from E[S B S] = (1 + 1/N) Λ B Λ + (1/N) tr(BΛ) Λ for symmetric B,
    S = (1/N) Σ_n x_n x_nᵀ (Isserlis; for any B the (1/N) Λ B Λ term is (1/N) Λ Bᵀ Λ).
    """
    lam = _check_eigenvalues(eigenvalues)
    N = check_positive_int("n_context", n_context)
    gain = lam / (1.0 + (1.0 + lam.sum() / lam) / N)
    return lam.sum() - numpy.concatenate([[0.0], numpy.cumsum(gain)])


def pcr_matrix(cov: Covariance, n_context: int, m: int) -> numpy.ndarray:
    """Σ_{d' ≤ m} c_d' e_d' e_d'ᵀ, c = λ⁻¹ (1 + (1 + tr Λ/λ)/N)⁻¹: the effective matrix of
    principal component regression on the top m eigenvectors (ATTN_S at plateau m)."""
    _check_record("cov", cov, (Covariance,), "covariance")
    lam, E = cov.eigenvalues, cov.eigenvectors
    m = check_non_negative_int("m", m)
    if m > lam.shape[0]:
        raise ValueError(f"m must be ≤ d = {lam.shape[0]}, got {m}")
    c = 1.0 / (lam * (1.0 + (1.0 + lam.sum() / lam) / check_positive_int("n_context", n_context)))
    return (E[:, :m] * c[:m]) @ E[:, :m].T


def predictor_loss(A: numpy.ndarray, Lambda: numpy.ndarray, n_context: int) -> float:
    """The population loss of ŷ = βᵀ A x_q for x ~ N(0, Λ), w ~ N(0, I):

        E (y_q − ŷ)² = tr Λ − 2 tr(Λ A Λ) + (1 + 1/N) tr(Λ A Λ Aᵀ Λ) + (1/N) tr(A Λ Aᵀ Λ) tr Λ

    (β = S w, S = (1/N) Σ x_n x_nᵀ, and E[S B S] for B = A Λ Aᵀ, Isserlis)."""
    N = check_positive_int("n_context", n_context)
    d = _check_square("Lambda", Lambda)
    if getattr(A, "shape", None) != (d, d):
        raise ValueError(f"A must have Lambda's shape {(d, d)}, got"
                         f" {getattr(A, 'shape', type(A).__name__)}")
    check_float_array("A", A)
    if not numpy.all(numpy.isfinite(A)):
        raise ValueError("A contains NaN or infinity")
    LAL = Lambda @ A @ Lambda
    return float(numpy.trace(Lambda) - 2.0 * numpy.trace(LAL)
                 + (1.0 + 1.0 / N) * numpy.trace(LAL @ A.T @ Lambda)
                 + numpy.trace(A @ Lambda @ A.T @ Lambda) * numpy.trace(Lambda) / N)


# -- the fast exact version: sufficient statistics ---------------------------------------


class FeatureStatistics(NamedTuple):
    """Mean statistics of φ = vec(G ⊗ x_q) ∈ ℝ^F, F = (d+1)² d, over a set of sequences."""

    second: numpy.ndarray  # (F, F) mean φ φᵀ
    cross: numpy.ndarray  # (F,)    mean y_q φ
    y2: float  # mean y_q²
    n: int  # number of sequences


def feature_statistics(data: Sequences, chunk: int = 10_000) -> FeatureStatistics:
    """mean φφᵀ, mean y_q φ and mean y_q², φ = vec(G ⊗ x_q), G = X Xᵀ/N (query included).

    The loss of any ATTN_M or ATTN_S weights on these sequences is then
    L = y2 − 2 ⟨t, cross⟩ + tᵀ second t with t = vec(T) (``loss_from_statistics``).
    """
    _check_sequences("data", data)
    chunk = check_positive_int("chunk", chunk)
    X, y = data.X, data.y_query
    P, D, T = X.shape
    d, N = D - 1, T - 1
    F = D * D * d
    second, cross = numpy.zeros((F, F)), numpy.zeros(F)
    for start in range(0, P, chunk):
        Xc = X[start:start + chunk]
        G = Xc @ numpy.swapaxes(Xc, 1, 2) / N  # (b, D, D)
        phi = (G[:, :, :, None] * Xc[:, None, :d, -1][:, None]).reshape(len(Xc), F)
        second += phi.T @ phi
        cross += phi.T @ y[start:start + chunk]
    return FeatureStatistics(second / P, cross / P, float(numpy.mean(y * y)), P)


def _heads(params):
    """(v (H, D), M (H, D, d)): the value's bottom rows and the first d columns of the
    key-query matrices (W^KQ_i or W^K_iᵀ W^Q_i)."""
    d = params.W_V.shape[-1] - 1
    if isinstance(params, MergedParams):
        M = params.W_KQ[:, :, :d]
    else:
        M = numpy.swapaxes(params.W_K, 1, 2) @ params.W_Q[:, :, :d]
    return params.W_V[:, d, :], M


def effective_tensor(params) -> numpy.ndarray:
    """T[a, b, c] = Σ_i v_i[a] M_i[b, c] with ŷ = ⟨T, G ⊗ x_q⟩. (d+1, d+1, d)."""
    _check_params(params)
    return _effective_tensor(params)


def _effective_tensor(params) -> numpy.ndarray:
    v, M = _heads(params)
    return numpy.einsum("ha,hbc->abc", v, M)


def effective_matrix(params) -> numpy.ndarray:
    """A = T[d, :d, :] = Σ_i v_i M_i[:d, :]: the matrix of the β-term, ŷ = βᵀ A x_q + the
    terms of the zero-initialised entries (exactly ŷ = βᵀ A x_q when they are zero). (d, d)."""
    _check_params(params)
    return _effective_matrix(params)


def _effective_matrix(params) -> numpy.ndarray:
    d = params.W_V.shape[-1] - 1
    return _effective_tensor(params)[d, :d, :]


def loss_from_statistics(params, stats: FeatureStatistics) -> float:
    """L = y2 − 2 ⟨t, cross⟩ + tᵀ second t: the exact mean squared error on the set."""
    _check_statistics("stats", stats, _check_params(params))
    return _loss_from_statistics(params, stats)


def _loss_from_statistics(params, stats: FeatureStatistics) -> float:
    t = _effective_tensor(params).ravel()
    return float(stats.y2 - 2.0 * t @ stats.cross + t @ (stats.second @ t))


def statistics_gradients(params, stats: FeatureStatistics):
    """(L, grads): the loss and its exact gradient from the statistics; the same record
    type as params. dL/dt = 2 (second t − cross), then back through T = Σ_i v_i ⊗ M_i."""
    _check_statistics("stats", stats, _check_params(params))
    return _statistics_gradients(params, stats)


def _statistics_gradients(params, stats: FeatureStatistics):
    v, M = _heads(params)
    D = params.W_V.shape[-1]
    d = D - 1
    t = numpy.einsum("ha,hbc->abc", v, M).ravel()
    second_t = stats.second @ t
    loss = float(stats.y2 - 2.0 * t @ stats.cross + t @ second_t)
    dT = (2.0 * (second_t - stats.cross)).reshape(D, D, d)
    # forward: T = Σ_i v_i ⊗ M_i
    dv = numpy.einsum("abc,hbc->ha", dT, M)  # (H, D)
    dM = numpy.einsum("abc,ha->hbc", dT, v)  # (H, D, d)
    dW_V = numpy.zeros_like(params.W_V)
    dW_V[:, d, :] = dv
    if isinstance(params, MergedParams):
        dW_KQ = numpy.zeros_like(params.W_KQ)
        dW_KQ[:, :, :d] = dM
        return loss, MergedParams(dW_V, dW_KQ)
    # forward: M_i = W^K_iᵀ W^Q_i[:, :d]
    dW_K = params.W_Q[:, :, :d] @ numpy.swapaxes(dM, 1, 2)  # (H, R, D)
    dW_Q = numpy.zeros_like(params.W_Q)
    dW_Q[:, :, :d] = params.W_K @ dM
    return loss, SeparateParams(dW_V, dW_K, dW_Q)


class Trajectory(NamedTuple):
    """A gradient-descent run, recorded every ``stride`` epochs."""

    epochs: numpy.ndarray  # (E,) the epochs recorded (before that epoch's step)
    train_loss: numpy.ndarray  # (E,)
    heldout_loss: numpy.ndarray  # (E,) on the held-out statistics
    effective: numpy.ndarray  # (E, d, d) the effective matrix A
    params: object  # the final weights


def train_gd(params, train: FeatureStatistics, heldout: FeatureStatistics, lr: float,
             epochs: int, stride: int = 10, freeze_zero_blocks: bool = False,
             stop_below: float | None = None) -> Trajectory:
    """Full-batch gradient descent θ ← θ − lr ∇L(θ) on the training statistics, for
    ATTN_M or ATTN_S weights; records the training and held-out losses and the effective
    matrix every ``stride`` epochs (and at the last epoch). ``freeze_zero_blocks`` keeps
    the zero-initialised entries at zero; ``stop_below`` ends the run at the first
    recorded epoch whose held-out loss is below it (a drop-time measurement, to within
    ``stride`` epochs). Exact: equal to ``per_sequence_gd``.
    """
    d = _check_params(params)
    _check_statistics("train", train, d)
    _check_statistics("heldout", heldout, d)
    lr = check_positive_float("lr", lr)
    epochs = check_non_negative_int("epochs", epochs)
    stride = check_positive_int("stride", stride)
    if stop_below is not None and (
            isinstance(stop_below, bool) or not isinstance(stop_below, (int, float, numpy.number))
            or numpy.isnan(stop_below)):
        raise ValueError(f"stop_below must be None or a number (a held-out loss), got"
                         f" {stop_below!r}")
    mask = zero_block_mask(params) if check_bool("freeze_zero_blocks", freeze_zero_blocks) else None
    rows = []
    for epoch in range(epochs + 1):
        loss, grads = _statistics_gradients(params, train)
        _check_losses_finite(loss, epoch, lr)
        if epoch % stride == 0 or epoch == epochs:
            held = _loss_from_statistics(params, heldout)
            rows.append((epoch, loss, held, _effective_matrix(params)))
            if stop_below is not None and held < stop_below:
                break
        if epoch == epochs:
            break
        if mask is not None:
            grads = type(grads)(*(g * m for g, m in zip(grads, mask)))
        params = type(params)(*(w - lr * g for w, g in zip(params, grads)))
    return Trajectory(numpy.array([r[0] for r in rows]), numpy.array([r[1] for r in rows]),
                      numpy.array([r[2] for r in rows]), numpy.array([r[3] for r in rows]),
                      params)


def per_sequence_gd(params, data: Sequences, lr: float, epochs: int,
                    freeze_zero_blocks: bool = False):
    """The textbook version of ``train_gd``: forward and backward on every sequence.

    Works for ATTN_M, ATTN_S and CubicParams (on ``cubic_feature(data.X)``). Returns
    (training losses before each step (epochs + 1,), final params).
    """
    d = _check_params(params, (MergedParams, SeparateParams, CubicParams))
    _check_sequences("data", data)
    if isinstance(params, CubicParams) and data.X.shape[1] != d + 1:
        raise ValueError(f"data.X has tokens of width {data.X.shape[1]}, the CubicParams of"
                         f" d = {d} need d + 1 = {d + 1}")
    lr = check_positive_float("lr", lr)
    epochs = check_non_negative_int("epochs", epochs)
    mask = zero_block_mask(params) if check_bool("freeze_zero_blocks", freeze_zero_blocks) else None
    z = cubic_feature(data.X) if isinstance(params, CubicParams) else None
    losses = []
    for epoch in range(epochs + 1):
        if z is not None:
            y_hat, cache = cubic_forward(z, params)
        else:
            forward = merged_forward if isinstance(params, MergedParams) else separate_forward
            out, cache = forward(data.X, params)
            y_hat = prediction(out)
        loss, dy = squared_error(y_hat, data.y_query)
        _check_losses_finite(loss, epoch, lr)
        losses.append(loss)
        if epoch == epochs:
            break
        if z is not None:
            grads = cubic_backward(dy, cache)
        else:
            dout = numpy.zeros_like(out)
            dout[:, -1, -1] = dy
            backward = merged_backward if isinstance(params, MergedParams) else separate_backward
            grads = backward(dout, cache)[1]
        if mask is not None:
            grads = type(grads)(*(g * m for g, m in zip(grads, mask)))
        params = type(params)(*(w - lr * g for w, g in zip(params, grads)))
    return numpy.array(losses), params
