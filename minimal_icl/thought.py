"""One patch for all queries: a context compressed into a query-independent update of W.

Theorem 2.2's ΔW = W δu u_∅ᵀ/‖u_∅‖² depends on the query through u_∅ and δu. A single
matrix for a whole context can only be fitted (docs/theory.md §7; the "thought" patch
of the paper's later versions). With K calibration queries x_1..x_K, for one block:

    a_k = u_∅(x_k)                  the MLP input of query k run alone,
    u_k = W (u_C(x_k) − u_∅(x_k))   what the patch must add to W a_k,

and Δ* is the minimum-norm least-squares solution of Δ a_k ≈ u_k:

    Δ* = argmin { ‖Δ‖_F : Δ minimises Σ_k ‖Δ a_k − u_k‖² } = U A⁺,
    U = [u_1 .. u_K] (M, K),   A = [a_1 .. a_K] (D, K).

* K = 1: A⁺ = a_1ᵀ/‖a_1‖², so Δ* is Theorem 2.2's ΔW for x_1.
* A of full column rank: A⁺A = I, Δ* a_k = u_k for every k, so (W + Δ*) a_k = W u_C(x_k)
  and every calibration query is reproduced exactly by a block without an MLP skip.
  That needs K ≤ dim span{u_∅(x)} over the queries x, which is at most D, but D − 1
  with LayerNorm whose bias is 0 (LN2's output is then γ ⊙ a centred vector), and d for
  regression queries (x; 0) through a block without skips or LayerNorm (A(x) = W_O W_V
  (x; 0)): K = 2 on the paper model. Generic queries reach that dimension.
* K above that dimension: the system is overdetermined; Δ* is a least-squares
  compromise, exact on no query in general.

With an MLP skip the block's output at a query is out = h + MLP(u), and the output bias
b′ enters it as + b′. Given Δ*, the output bias correction

    Δb′* = (1/K) Σ_k [ T_W(C, x_k) − T_{W+Δ*}(x_k) ]

(the mean, over the calibration queries, of the with-context output minus the output of
the query alone through the block patched with Δ* only) is the exact minimiser of
Σ_k ‖T_{W+Δ*, b′+Δb′}(x_k) − T_W(C, x_k)‖² over Δb′: the output is Δb′ plus terms
free of Δb′, and the minimiser of Σ_k ‖Δb′ − r_k‖² is the mean of the r_k. Where Δ* is
exact on the calibration queries (K = 1, or A of full column rank), T_{W+Δ*}(x_k) =
h_∅(x_k) + MLP(u_C(x_k)) and Δb′* = (1/K) Σ_k (h_C(x_k) − h_∅(x_k)): for K = 1 the
theorem's Δb′. It is a two-stage fit (Δ* at the MLP input, then Δb′ at the output), not
the joint minimiser over (Δ, Δb′). Without an MLP skip Δb′ = 0, as in ``ImplicitUpdate``.

Stacks are refused: block 2's input for a query alone would depend on how well block
1's fitted patch reproduces its output, which is not exact.

Shapes: B prompts, N context tokens, K calibration queries, D token width, M MLP width.
Reference: Dherin et al. (2025), arXiv:2507.16003 (later versions); docs/theory.md §7.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from .backend import Array, namespace
from .block import BlockPatch, block_forward
from .config import TransformerConfig
from .implicit import implicit_update
from .model import forward
from .params import ModelParams
from .validation import check_n_calibration, check_rtol, check_thought_inputs

# Singular values of A below RANK_CUTOFF · max(D, K) · eps · σ_max count as zero in A⁺.
# The array-API default of linalg.pinv is max(D, K) · eps, but the inputs a_k come out of
# a forward pass, and regression queries (x; 0) through a block without skips span only
# d < D directions: on the trained paper model (K = 3, D = 3) their third singular value
# is rounding, up to about 1e-14 · σ_max (the largest over 256 prompts: 0.7e-14 to 1.5e-14
# in eight such draws on the model of seed 0, 0.5e-14 to 0.9e-14 on those of seeds 1 and 2),
# 7 to 22 times the default cutoff. Inverted, it would add an arbitrary huge term to Δ*.
# The cutoff used sits 45 to 150 times above that rounding and far below the smallest
# singular values of generic queries (σ_min/σ_max ≥ 3e-5 over 256 prompts).
RANK_CUTOFF = 1000


class ThoughtPatch(NamedTuple):
    """A query-independent patch of one block, fitted on K calibration queries.

    Usable as the block's entry in ``forward(..., patches=(patch,))`` for any query.
    """

    delta_W: Array  # (B, M, D)  Δ* = U A⁺, added to W1
    delta_b: Array  # (B, D)     Δb′*, added to b2 (zeros without an MLP skip)
    inputs: Array  # (B, K, D)   a_k = u_∅(x_k), the MLP input of each query alone
    targets: Array  # (B, K, M)  u_k = W (u_C(x_k) − u_∅(x_k))


class CompressionError(NamedTuple):
    """Held-out error of the thought patch against K, and its two references.

    Every error is the mean, over prompts and held-out queries x, of the squared
    distance ‖T(x) − T_W(C, x)‖² between a block output and the with-context one.
    """

    n_calibration: tuple  # the K values
    thought: tuple  # (len(K),) the thought patch fitted on the first K queries
    exact: float  # Theorem 2.2's per-query patch (rounding only)
    no_context: float  # the query alone, unpatched: T_W(x)


def _with_context(params, config, context: Array, queries: Array):
    """Block 0 on [C, x_k] for every k, and on x_k alone.

    Returns (out_C, u_C, u_0, h_0, tokens_alone): out_C, u_C, u_0, h_0 (B, K, D) at the
    query; tokens_alone (B·K, 1, D).
    """
    xp = namespace(context, queries)
    B, N, D = context.shape
    K = queries.shape[1]
    repeated = xp.reshape(xp.broadcast_to(context[:, None, :, :], (B, K, N, D)), (B * K, N, D))
    alone = xp.reshape(queries, (B * K, 1, D))
    out, full = forward(params, config, xp.concat([repeated, alone], axis=1), last_only=True)
    _, without = block_forward(alone, params.blocks[0], config)
    shape = (B, K, D)
    return (
        xp.reshape(out[:, -1, :], shape),
        xp.reshape(full.blocks[0].u[:, -1, :], shape),
        xp.reshape(without.u[:, 0, :], shape),
        xp.reshape(without.h[:, 0, :], shape),
        alone,
    )


def _repeat(a: Array, K: int) -> Array:
    """(B, ...) -> (B·K, ...): each prompt's array once per query."""
    xp = namespace(a)
    return xp.reshape(xp.broadcast_to(a[:, None, ...], (a.shape[0], K, *a.shape[1:])),
                      (a.shape[0] * K, *a.shape[1:]))


def thought_patch(
    params: ModelParams,
    config: TransformerConfig,
    context: Array,
    calibration_queries: Array,
    rtol: float | None = None,
) -> ThoughtPatch:
    """The minimum-norm least-squares patch of one block for a context, over K queries.

        a_k = u_∅(x_k),  u_k = W (u_C(x_k) − u_∅(x_k)),  Δ* = U A⁺  (U (M, K), A (D, K)),
        Δb′* = (1/K) Σ_k [T_W(C, x_k) − T_{W+Δ*}(x_k)]  with an MLP skip, else 0

    (module docstring: what each minimises). For K = 1 and x_1 the query, Δ* is Theorem
    2.2's ΔW and Δb′* its Δb′; where A has full column rank (K ≤ D generic queries, but
    K ≤ D − 1 with LayerNorm of bias 0 and K ≤ d for regression queries through the paper's
    block: module docstring) each calibration query is reproduced exactly by a block
    without an MLP skip. Use it on any query x:
    ``forward(params, config, x[:, None, :], patches=(patch,))`` approximates
    ``forward(params, config, [C, x])`` at x.

    Args:
        context: (B, N, D) the context C of each prompt.
        calibration_queries: (B, K, D) the queries x_k the patch is fitted on.
        rtol: singular values of A at most rtol · σ_max count as zero in A⁺; default
            RANK_CUTOFF · max(D, K) · eps of the dtype.

    Returns a ``ThoughtPatch``: delta_W (B, M, D), delta_b (B, D), inputs (B, K, D),
    targets (B, K, M).
    Raises ValueError for a stack (n_blocks > 1), mismatched shapes, or rtol not finite ≥ 0
    or ≥ 1 (given, or the default's, which reaches 1 from K = 8389 float32 queries on:
    every singular value would count as zero); TypeError for a context and queries of
    different dtypes.
    Reference: Dherin et al. (2025), later versions; docs/theory.md §7.
    """
    check_thought_inputs(params, config, context, calibration_queries, "calibration_queries")
    rtol = check_rtol(rtol)
    xp = namespace(context, calibration_queries)
    B, K, D = calibration_queries.shape
    given = rtol is not None
    if rtol is None:
        rtol = RANK_CUTOFF * max(D, K) * float(xp.finfo(context.dtype).eps)
    if rtol >= 1.0:  # every singular value would count as zero: the patch would be 0
        raise ValueError(
            f"rtol = {rtol:.3g} ≥ 1 treats every singular value of A as zero, so the patch"
            f" would be 0: " + ("pass rtol < 1" if given else
                                f"the default cutoff RANK_CUTOFF·max(D, K)·eps reaches 1 for"
                                f" K = {K} calibration queries in {context.dtype}; use"
                                f" float64, fewer queries or an explicit rtol < 1"))
    W = params.blocks[0].mlp.W1  # (M, D)
    out_C, u_C, u_0, _, alone = _with_context(params, config, context, calibration_queries)
    targets = (u_C - u_0) @ W.mT  # (B, K, M)  u_k = W δu_k
    A_pinv = xp.linalg.pinv(u_0.mT, rtol=rtol)  # (B, K, D)  A⁺
    delta_W = targets.mT @ A_pinv  # (B, M, D)  U A⁺
    delta_b = xp.zeros_like(u_C[:, 0, :])  # (B, D)
    if config.mlp_skip:
        patch = BlockPatch(_repeat(delta_W, K), _repeat(delta_b, K))
        out_0, _ = block_forward(alone, params.blocks[0], config, patch)  # (B·K, 1, D)
        residual = out_C - xp.reshape(out_0, (B, K, D))  # (B, K, D)
        delta_b = xp.mean(residual, axis=1)  # (B, D)
    return ThoughtPatch(delta_W, delta_b, u_0, targets)


def compression_error(
    params: ModelParams,
    config: TransformerConfig,
    context: Array,
    calibration_queries: Array,
    test_queries: Array,
    n_calibration: Sequence[int] = (1, 2, 3, 5, 10, 25),
    rtol: float | None = None,
) -> CompressionError:
    """Held-out error of the thought patch fitted on the first K calibration queries.

    For each K in ``n_calibration``, ``thought_patch`` on calibration_queries[:, :K],
    then on every held-out query x

        error(K) = mean over prompts and x of ‖T_{W+Δ*, b′+Δb′*}(x) − T_W(C, x)‖²,

    beside the same error for Theorem 2.2's per-query patch (zero up to rounding) and
    for the query alone without a patch, T_W(x) (no context).

    context (B, N, D), calibration_queries (B, K_max, D), test_queries (B, Q, D);
    every K must satisfy 1 ≤ K ≤ K_max. Returns a ``CompressionError``.
    """
    check_thought_inputs(params, config, context, calibration_queries, "calibration_queries")
    check_thought_inputs(params, config, context, test_queries, "test_queries")
    Ks = check_n_calibration(n_calibration, calibration_queries.shape[1])
    rtol = check_rtol(rtol)
    xp = namespace(context, test_queries)
    B, Q, D = test_queries.shape
    out_C, _, _, _, alone = _with_context(params, config, context, test_queries)  # (B, Q, D)

    def error(out: Array) -> float:
        diff = xp.reshape(out, (B, Q, D)) - out_C
        return float(xp.mean(xp.sum(diff * diff, axis=-1)))

    thought = []
    for K in Ks:
        patch = thought_patch(params, config, context, calibration_queries[:, :K, :], rtol)
        repeated = BlockPatch(_repeat(patch.delta_W, Q), _repeat(patch.delta_b, Q))
        out, _ = forward(params, config, alone, patches=(repeated,))
        thought.append(error(out))
    exact_patch = implicit_update(
        params, config, _repeat(context, Q), xp.reshape(alone, (B * Q, D))
    )
    exact, _ = forward(params, config, alone, patches=exact_patch)
    no_context, _ = forward(params, config, alone)
    return CompressionError(Ks, tuple(thought), error(exact), error(no_context))
