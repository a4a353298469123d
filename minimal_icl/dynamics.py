"""Proposition 3.1 (Dherin et al. 2025, v1): consuming context tokens is a gradient path.

Feed the context c_1, ..., c_N to one block one token at a time. With A_i = A(c_1..c_i, x)
the query's MLP input after the first i tokens (A_0 = A(x)) and W_i = W_0 + ΔW_i, ΔW_i
Theorem 2.2's patch for the prompt [c_1..c_i, x] with its whole context removed (not
ΔW(Y) for Y = {c_1..c_i} removed from the whole prompt, which keeps c_{i+1}..c_N),

    W_{i+1} = W_i − η_x ∇_W L_i(W_i),   η_x = 1/‖A(x)‖²,
    L_i(W) = trace(G_iᵀ W),              G_i = W_0 (A_i − A_{i+1}) A(x)ᵀ,

and T_{W_i}(x) = T_{W_0}(c_1..c_i, x) for every i. L_i is linear in W, so ∇L_i = G_i at
every W; the step size η_x depends on the query only. (The paper writes h for η_x and
Δ_i for G_i; here h is the residual stream, see docs/notation.md.) Every W_i − W_0 is
Theorem 2.2's update, computed by ``implicit.rank_one_update``. Every increment has the right factor
A(x)ᵀ, so the whole path W_i − W_0 stays rank 1, and

    ‖W_{i+1} − W_i‖_F = ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖.

The L_i are not data-fit losses (linear in W, they are unbounded below unless G_i = 0):
"gradient descent" here is a rewriting of the increments, not the optimisation of a task
loss.

The prefixes are computed from ONE run of the block on the whole prompt: the query sits
last and sees every token (causal or not), and there are no positions, so its attention
output after i tokens only renormalises the query row of that run (docs/theory.md §4):

    softmax:  A(c_1..c_i, x) = W_O concat_h[(Σ_{j≤i} P_j v_j + P_x v_x) / (Σ_{j≤i} P_j + P_x)]
    linear:   A(c_1..c_i, x) = W_O concat_h[ Σ_{j≤i} P_j v_j + P_x v_x ]

with P the query row of the attention weights on the whole prompt (for linear attention
the scaled scores S themselves, so a prefix only drops terms; s_i below is the recurrent
state), then the residual h_i = z_x + A(c_1..c_i, x) with an attn skip (else h_i is that
attention output) and u_i = LN2(h_i) with LayerNorm (else u_i = h_i), elementwise per
prefix; the path's A_i is u_i. For the recurrent layer (``contextual_layer="rnn"``,
docs/theory.md §8) one run over the prompt gives the states s_i after c_1..c_i, and
A(c_1..c_i, x) = W_out tanh(W_s s_i + W_in x + b_s) is one more step from each
(``rnn.rnn_query_after_prefixes``; x here is the layer's input, LN1(x) with LayerNorm).

Shapes: B prompts, N context tokens, D token width, M MLP width.
Reference: Dherin et al. (2025), arXiv:2507.16003, Proposition 3.1 and the appendix of v1.
Single block only: a stack raises a ValueError.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy

from .attention import merge_heads
from .backend import Array, device, namespace
from .block import BlockPatch, block_forward
from .config import TransformerConfig
from .implicit import (
    DegenerateQueryError,
    ImplicitUpdate,
    check_nonzero,
    norms,
    outer,
    rank_one_update,
)
from .layernorm import layernorm_forward
from .linear import linear_forward
from .model import forward
from .params import BlockParams, ModelParams
from .rnn import rnn_query_after_prefixes
from .validation import (
    check_index,
    check_params,
    check_path_weights,
    check_prefix_inputs,
    check_prefix_method,
    check_prompt,
    check_single_block,
    check_states_finite,
    quiet_checked_pass,
)

PREFIX_METHODS = ("auto", "cumulative", "forward")


# -- the query's state after each prefix of the context ---------------------------------


def prefix_states(
    block_params: BlockParams,
    config: TransformerConfig,
    context: Array,
    query: Array,
    method: str = "auto",
) -> tuple[Array, Array]:
    """The query's MLP input u_i and residual h_i on the prompt [c_1..c_i, x], i = 0..N.

    ``method``:
        "cumulative": one block run on the whole prompt, then prefix sums of the query row
            (see the module docstring). Exact to rounding.
        "forward": N + 1 runs of ``block_forward``, one per prefix (the reference).
        "auto": "cumulative", unless for softmax attention the query's weight on itself
            in the whole-prompt run is below √(smallest normal float) for some prompt and
            head: then the renormalised prefix weights would lose relative accuracy in
            subnormal numbers, and "forward" is used instead.
    For the recurrent layer "auto" and "cumulative" take the states s_i of one run and
    one more step with the query from each (module docstring).

    context (B, N, D), query (B, D). Returns (u (B, N+1, D), h (B, N+1, D)).
    A ValueError or TypeError names the argument: block parameters that do not match
    ``config``, a context or query of another shape, dtype or array type, an unknown
    ``method``. Shapes and dtypes only: ``implicit_path`` and ``factorised_path`` also
    check that the prompt is finite (and call the unchecked ``_prefix_states``).
    """
    check_prefix_inputs(block_params, config, context, query)
    check_prefix_method(method, PREFIX_METHODS)
    return _prefix_states(block_params, config, context, query, method)


def _prefix_states(block_params, config, context, query, method):
    """:func:`prefix_states` without the argument checks, for callers that made them."""
    xp = namespace(context, query)
    B, N, D = context.shape
    query_token = xp.reshape(query, (B, 1, D))
    tokens = xp.concat([context, query_token], axis=1)  # (B, N+1, D)

    if method != "forward" and config.contextual_layer == "rnn":
        _, cache = block_forward(tokens, block_params, config, last_only=True)
        states = cache.attn.states[:, :N, :]  # (B, N, S)  s_1..s_N
        states = xp.concat([xp.zeros_like(states[:, :1, :]), states], axis=1)  # s_0 = 0
        A = rnn_query_after_prefixes(states, cache.attn.x[:, -1, :], block_params.attn)
        return _query_states(block_params, config, query_token, A)
    if method != "forward":
        _, cache = block_forward(tokens, block_params, config, last_only=True)
        w = cache.attn.weights[:, :, 0, :]  # (B, H, N+1): the query row; last entry is x itself
        if method == "cumulative" or config.attention == "linear":
            usable = True
        else:
            usable = bool(xp.min(w[:, :, N]) >= math.sqrt(xp.finfo(w.dtype).smallest_normal))
        if usable:
            return _prefix_states_cumulative(block_params, config, query_token, w, cache.attn.v)

    u, h = [], []
    for i in range(N + 1):
        prefix = xp.concat([context[:, :i, :], query_token], axis=1)  # (B, i+1, D)
        _, cache = block_forward(prefix, block_params, config, last_only=True)
        u.append(cache.u)
        h.append(cache.h)
    return xp.concat(u, axis=1), xp.concat(h, axis=1)


def _prefix_states_cumulative(block_params, config, query_token, w, v):
    """u_i, h_i from the query row w (B, H, N+1) and values v (B, H, N+1, K) of one run."""
    xp = namespace(w, v)
    N = w.shape[-1] - 1
    wv = xp.expand_dims(w, axis=-1) * v  # (B, H, N+1, K)  weight × value per token
    # Σ_{j≤i} w_j v_j for i = 0..N (an empty sum at i = 0), plus the query's own term
    heads = xp.cumulative_sum(wv[:, :, :N, :], axis=2, include_initial=True) + wv[:, :, N:, :]
    if config.attention == "softmax":
        total = xp.cumulative_sum(w[:, :, :N], axis=2, include_initial=True) + w[:, :, N:]
        heads = heads / xp.expand_dims(total, axis=-1)  # (B, H, N+1, K) renormalised
    A, _ = linear_forward(merge_heads(heads), block_params.attn.W_O)  # (B, N+1, D)
    return _query_states(block_params, config, query_token, A)


def _query_states(block_params, config, query_token, A):
    """u_i, h_i (B, N+1, D) from the layer's outputs A_i at the query (B, N+1, D)."""
    h = query_token + A if config.attn_skip else A
    if config.layer_norm:
        u, _ = layernorm_forward(h, block_params.ln2, config.ln_eps)
    else:
        u = h
    return u, h


def _single_block(params: ModelParams, config: TransformerConfig, what: str) -> BlockParams:
    check_params(params, config)
    check_single_block(config, what)
    return params.blocks[0]


# -- Proposition 3.1: the implicit gradient path ----------------------------------------


class ImplicitPath(NamedTuple):
    """The weights W_0, W_1, ..., W_N of one block as its context is consumed.

    Nothing of size (B, N, M, D) is stored: W_i is materialised on demand by
    ``weights(i)``.
    """

    W0: Array  # (M, D)             the block's W1
    A_query: Array  # (B, D)        A(x) = A_0: the MLP input with the query alone
    step_size: Array  # (B,)        η_x = 1/‖A(x)‖²
    A_prefix: Array  # (B, N+1, D)  A_i = A(c_1..c_i, x) at the MLP input, i = 0..N
    columns: Array  # (B, N, M)     W_0 (A_{i+1} − A_i): W_{i+1} − W_i = η_x columns[:, i] ⊗ A(x)
    increment_norms: Array  # (B, N)  ‖W_{i+1} − W_i‖_F = ‖W_0 (A_{i+1} − A_i)‖ / ‖A(x)‖
    delta_b_prefix: Array  # (B, N+1, D)  Δb′ for prefix i: h_i − h_0 (zeros without MLP skip)

    @property
    def n_context(self) -> int:
        return self.A_prefix.shape[1] - 1

    def update(self, i: int) -> ImplicitUpdate:
        """Theorem 2.2's update for the prefix c_1..c_i: W_i = W_0 + ΔW_i,
        ΔW_i = W_0 (A_i − A_0) A(x)ᵀ/‖A(x)‖² (``rank_one_update`` with a = A(x))."""
        i = check_index(i, 0, self.n_context, "prefix")
        delta_u = self.A_prefix[:, i, :] - self.A_query  # (B, D)  A_i − A_0
        delta_W, column, row = rank_one_update(self.W0, delta_u, self.A_query, 0, "A(x)")
        delta_b = self.delta_b_prefix[:, i, :]
        return ImplicitUpdate(delta_W, delta_b, column, row, delta_u, self.A_query)

    def weights(self, i: int) -> Array:
        """W_i = W_0 + W_0 (A_i − A_0) A(x)ᵀ / ‖A(x)‖² = W_0 + ΔW_i, (B, M, D)."""
        return self.W0 + self.update(i).delta_W

    def gradient(self, i: int) -> Array:
        """∇L_i = G_i = W_0 (A_i − A_{i+1}) A(x)ᵀ, the same at every W; (B, M, D), i < N.

        W_{i+1} = W_i − η_x G_i: G_i is −(W_{i+1} − W_i)/η_x, the increment without its
        division by ‖A(x)‖²."""
        i = check_index(i, 0, self.n_context - 1, "step")
        return outer(-self.columns[:, i, :], self.A_query)

    def loss(self, i: int, W: Array) -> Array:
        """L_i(W) = trace(G_iᵀ W) for W (M, D) or (B, M, D); returns (B,)."""
        check_path_weights(W, self.W0, self.A_query.shape[0])
        xp = namespace(W, self.A_query)
        return xp.sum(xp.sum(self.gradient(i) * W, axis=-1), axis=-1)

    def patch(self, i: int) -> tuple:
        """The patches for ``forward`` that make the query alone behave like [c_1..c_i, x]."""
        return (self.update(i),)


def _step_size(norm: Array) -> Array:
    """η = 1/‖a‖² from the norms ‖a‖ (non-zero): (1/‖a‖)/‖a‖, which is infinity where
    η exceeds the largest float (‖a‖ below about 7e-155 in float64): what the float can
    say, documented in docs/validation.md, so NumPy's overflow warning is not raised."""
    with numpy.errstate(over="ignore"):  # NumPy's flag; other libraries do not warn
        return (1.0 / norm) / norm


def _check_nonzero_or_overflow(norm, params, config, context, query, vector: str) -> None:
    """check_nonzero, but name an overflow when that is why the vector is zero: a LayerNorm
    whose variance overflows maps its input to 0, and ``forward``'s own check says so.
    The extra forward pass runs on the error path only."""
    try:
        check_nonzero(norm, 0, vector)
    except DegenerateQueryError:
        xp = namespace(context, query)
        forward(params, config, xp.concat([context, xp.expand_dims(query, axis=1)], axis=1))
        raise


def implicit_path(
    params: ModelParams,
    config: TransformerConfig,
    context: Array,
    query: Array,
    method: str = "auto",
) -> ImplicitPath:
    """The implicit gradient path of Proposition 3.1 for one block, every prompt at once.

    context (B, N, D), query (B, D); ``method`` as in :func:`prefix_states`.
    Raises DegenerateQueryError if A(x) = 0 for some prompt, ValueError for a stack or
    bad input.
    """
    block = _single_block(params, config, "implicit_path")
    check_prompt(config, context, query)
    check_prefix_method(method, PREFIX_METHODS)
    xp = namespace(context, query)
    with quiet_checked_pass(True):  # an overflow is named just below
        u, h = _prefix_states(block, config, context, query, method)  # (B, N+1, D) each
    check_states_finite(u, "implicit_path", params, context, query)
    W0 = block.mlp.W1
    A_query = u[:, 0, :]  # (B, D)
    norm = norms(A_query)  # (B,)
    _check_nonzero_or_overflow(norm, params, config, context, query, "A(x)")
    # W_0 (A_{i+1} − A_i), the column of W_{i+1} − W_i (its row is η_x A(x), shared)
    columns = (u[:, 1:, :] - u[:, :-1, :]) @ W0.mT  # (B, N, M)
    increment_norms = norms(columns) / xp.expand_dims(norm, axis=-1)  # (B, N)
    delta_b = h - h[:, :1, :] if config.mlp_skip else xp.zeros_like(h)
    return ImplicitPath(W0, A_query, _step_size(norm), u, columns, increment_norms, delta_b)


# -- the factorised form (appendix of v1) ----------------------------------------------


class FactorisedPath(NamedTuple):
    """W_i = W_{i−1}(I + η_i F_i): consuming tokens from the FRONT, the rest in context.

    With A_{>i} = A(c_{i+1}..c_N, x) the query's MLP input when c_1..c_i are consumed
    (A_{>0} = A(C, x), A_{>N} = A(x)):

        ΔA(c_i) = A_{>i−1} − A_{>i},   F_i = ΔA(c_i) A_{>i}ᵀ,   η_i = 1/‖A_{>i}‖²,
        W_i = W_{i−1} (I + η_i F_i) = W_{i−1} + η_i (W_{i−1} ΔA(c_i)) A_{>i}ᵀ.

    (The paper writes h_i for η_i and A_i for F_i; see docs/notation.md.)

    Each step is Theorem 2.2 applied to W_{i−1}, removing c_i from the prompt
    [c_i..c_N, x]. By induction
    W_i A_{>i} = W_{i−1}(A_{>i} + ΔA(c_i)) = W_{i−1} A_{>i−1} = W_0 A_{>0},
    so T_{W_i}(c_{i+1}..c_N, x) = T_{W_0}(C, x) for every i, and T_{W_N}(x) = T_{W_0}(C, x).
    (With an MLP skip the output bias follows b′_i = b′_0 + h_C − h(A_{>i}), h(A_{>i}) the
    query's residual on [c_{i+1}..c_N, x].)

    W_N − W_0 also solves X A(x) = W_0 ΔA but is not the rank-1 ΔW(C) in general, another
    face of non-uniqueness. Being another solution, ‖W_N − W_0‖_F ≥ ‖ΔW(C)‖_F (ΔW(C) has
    minimum norm). Its rank: expanding the product, every term of W_N − W_0 starts with
    W_0 ΔA(c_j) and ends with A_{>k}ᵀ, so

        rank(W_N − W_0) ≤ min(N, M, dim span{ΔA(c_1), …, ΔA(c_N)}),

    and the ΔA are differences of MLP inputs that share the query's skip term:

        no LayerNorm:               ΔA ∈ range(W_O),                      dim ≤ min(D, H·K)
        LayerNorm, no attn skip:    ΔA ∈ γ ⊙ centred(range(W_O)),         dim ≤ min(D − 1, H·K)
        LayerNorm and attn skip:    ΔA ∈ γ ⊙ centred(span{x, range(W_O)}), dim ≤ min(D − 1, H·K + 1)

    (γ is LN2's gain; centred(·) subtracts the mean over the D features). For the recurrent
    layer (``contextual_layer="rnn"``) range(W_O) is range(W_out) and H·K is S: the ignored
    attention fields do not bound it. The rank generically reaches this bound
    (checked numerically; docs/theory.md §4), so it exceeds 1 for N ≥ 2 in generic
    models, while for N = 1, W_1 = W_0 + ΔW(C) exactly.
    """

    W0: Array  # (M, D)             the block's W1
    A_suffix: Array  # (B, N+1, D)  A_{>i} = A(c_{i+1}..c_N, x) at the MLP input, i = 0..N
    delta_A: Array  # (B, N, D)     ΔA(c_i) = A_{>i−1} − A_{>i} at index i − 1
    step_sizes: Array  # (B, N)     η_i = 1/‖A_{>i}‖² at index i − 1
    delta_b_suffix: Array  # (B, N+1, D)  b′_i − b′_0 = h(A_{>0}) − h(A_{>i}) (0 without MLP skip)

    @property
    def n_context(self) -> int:
        return self.A_suffix.shape[1] - 1

    def factor(self, i: int) -> Array:
        """F_i = ΔA(c_i) A_{>i}ᵀ, i = 1..N; (B, D, D)."""
        i = check_index(i, 1, self.n_context, "factor")
        return outer(self.delta_A[:, i - 1, :], self.A_suffix[:, i, :])

    def delta_W(self, i: int) -> Array:
        """W_i − W_0, (B, M, D), accumulated as i rank-1 updates (never forming the D × D
        factors, and without subtracting W_0, which would cancel digits when the update
        is small):  W_j − W_0 = (W_{j−1} − W_0) + η_j (W_{j−1} ΔA(c_j)) A_{>j}ᵀ, each step
        Theorem 2.2's update of W_{j−1} (``rank_one_update`` with δ = ΔA(c_j), a = A_{>j})."""
        i = check_index(i, 0, self.n_context, "step")
        xp = namespace(self.A_suffix)
        B = self.A_suffix.shape[0]
        delta = xp.zeros((B, *self.W0.shape), dtype=self.W0.dtype, device=device(self.W0))
        for j in range(1, i + 1):
            W = self.W0 + delta  # W_{j−1}, (B, M, D)
            step, _, _ = rank_one_update(
                W, self.delta_A[:, j - 1, :], self.A_suffix[:, j, :], 0, "A(c_{j+1}..c_N, x)"
            )
            delta = delta + step
        return delta

    def weights(self, i: int) -> Array:
        """W_i = W_0 (I + η_1 F_1)(I + η_2 F_2)···(I + η_i F_i), (B, M, D)."""
        return self.W0 + self.delta_W(i)

    def patch(self, i: int) -> tuple:
        """Patches for ``forward`` on the prompt [c_{i+1}..c_N, x]: W_i − W_0 and b′_i − b′_0."""
        return (BlockPatch(delta_W=self.delta_W(i), delta_b=self.delta_b_suffix[:, i, :]),)


def factorised_path(
    params: ModelParams,
    config: TransformerConfig,
    context: Array,
    query: Array,
    method: str = "auto",
) -> FactorisedPath:
    """The factorised path W_i = W_{i−1}(I + η_i F_i) of the v1 appendix, one block.

    The suffixes A_{>i} = A(c_{i+1}..c_N, x) are the prefixes of the reversed context (the
    query's attention output does not depend on the order of the tokens it sees). The
    recurrent layer depends on the order: each suffix is run as it stands.
    context (B, N, D), query (B, D). Raises DegenerateQueryError if some A_{>i}, i ≥ 1, is 0.
    """
    block = _single_block(params, config, "factorised_path")
    check_prompt(config, context, query)
    check_prefix_method(method, PREFIX_METHODS)
    xp = namespace(context, query)
    if config.contextual_layer == "rnn":
        B, N, D = context.shape
        query_token = xp.reshape(query, (B, 1, D))
        with quiet_checked_pass(True):  # an overflow is named just below
            runs = [block_forward(xp.concat([context[:, i:, :], query_token], axis=1), block,
                                  config, last_only=True)[1] for i in range(N + 1)]
        A_suffix = xp.concat([run.u for run in runs], axis=1)  # (B, N+1, D)
        h_res = xp.concat([run.h for run in runs], axis=1)  # (B, N+1, D)
        check_states_finite(A_suffix, "factorised_path", params, context, query)
    else:
        with quiet_checked_pass(True):  # an overflow is named just below
            u_rev, h_rev = _prefix_states(block, config, xp.flip(context, axis=1), query, method)
        check_states_finite(u_rev, "factorised_path", params, context, query)
        A_suffix = xp.flip(u_rev, axis=1)  # (B, N+1, D)  A_{>i} = A(c_{i+1}..c_N, x)
        h_res = xp.flip(h_rev, axis=1)  # (B, N+1, D)
    norm = norms(A_suffix[:, 1:, :])  # (B, N)  ‖A_{>i}‖, i = 1..N
    if norm.shape[-1] > 0:
        _check_nonzero_or_overflow(xp.min(norm, axis=-1), params, config, context, query,
                                   "A(c_{i+1}..c_N, x) for some i ≥ 1")
    delta_A = A_suffix[:, :-1, :] - A_suffix[:, 1:, :]  # (B, N, D)
    delta_b = h_res[:, :1, :] - h_res if config.mlp_skip else xp.zeros_like(h_res)
    return FactorisedPath(block.mlp.W1, A_suffix, delta_A, _step_size(norm), delta_b)
