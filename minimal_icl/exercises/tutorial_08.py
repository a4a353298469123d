"""Checks for tutorial 08 (linear attention and gradient descent).

Two "your turn" cells:

1. the context vector of un-normalised linear attention in closed form
   (``check_linear_attention_delta_A``):

       δA_x(Y) = W_O concat_h[ (Σ_{c∈Y} v_c k_cᵀ) q_x / √K ],   per head h,

   compared with the package's ``linear_attention_context_vector`` and with the δu of
   ``implicit_update`` on a block without LayerNorm (where δu = δA exactly);
2. von Oswald's weights (``check_von_oswald_weights``):

       W_K = W_Q = [[I_d, 0], [0, 0]],   W_V = [[0, 0], [θ_0, −1]],   W_P = (η/N) I,

   compared with the package's ``von_oswald_attention`` (whose W_O is √K W_P), then run as
   the layer e_q ← e_q + W_P Σ_j W_V e_j (W_K e_j)ᵀ W_Q e_q and as a block of this
   package, against an explicit gradient step θ_1 = θ_0 − η ∇L(θ_0),
   L(θ) = (1/2N) Σ_j (θ x_j − y_j)².

Each check gives a specific hint for the typical mistakes: a missing 1/N or 1/√K (or √K
taken of the wrong width or of H, or 1/K), a mean over Y instead of a sum, the weights not
transposed (a shape error inside the reader's function), the wrong sign of the −1, swapped
key and value roles, θ_0 in the transposed block, I_d copied into the value, 1/(N+1),
W_P on the y-entry only, W_P the number η/N, the 1/2 of L kept in W_P, η/N moved into
W_V, W_V and W_P returned in each other's place, W_O left out, one big head instead of H
separate ones, heads split or concatenated as (K, H), the query's own term in the sum.
Reference: von Oswald et al. (ICML 2023), Proposition 1; docs/theory.md §6.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy

from ..config import TransformerConfig
from ..implicit import implicit_update, linear_attention_context_vector
from ..model import forward
from ..params import AttentionParams, BlockParams, ModelParams
from ..validation import check_seed
from ..von_oswald import von_oswald_attention, von_oswald_model
from . import ExerciseError, call_answer, check_array

__all__ = [
    "check_linear_attention_delta_A",
    "check_von_oswald_weights",
    "linear_attention_mistakes",
    "von_oswald_mistakes",
]

# A block of linear attention whose sizes tell the mistakes apart: H·K ≠ D (W_O left
# out changes the shape), K ≠ D, two heads (one big head differs from two small ones).
CONFIG = TransformerConfig(d_token=4, n_blocks=1, n_heads=2, d_head=3, d_mlp=16,
                           attention="linear", activation="relu", attn_skip=True)
REMOVED = (0, 2, 3)  # Y: three of the seven context tokens


def _heads(tokens: numpy.ndarray, W: numpy.ndarray, n_heads: int) -> numpy.ndarray:
    """(B, T, D) tokens through W (H·K, D), split into heads: (B, H, T, K)."""
    B, T, _ = tokens.shape
    return numpy.transpose((tokens @ W.T).reshape(B, T, n_heads, -1), (0, 2, 1, 3))


def linear_attention_mistakes(attn: AttentionParams, n_heads: int, removed_tokens, query_token,
                              context) -> list[tuple[str, numpy.ndarray]]:
    """The typical wrong closed forms of δA, each with its hint.

    removed_tokens (B, |Y|, D), query_token (B, D), context (B, N, D) the whole context.
    """
    q = _heads(query_token[:, None, :], attn.W_Q, n_heads)  # (B, H, 1, K)
    K = q.shape[-1]

    def closed_form(tokens, transpose=False, scale=1.0 / math.sqrt(K)):
        k = _heads(tokens, attn.W_K, n_heads)
        v = _heads(tokens, attn.W_V, n_heads)
        memory = numpy.swapaxes(k, -1, -2) @ v if transpose else numpy.swapaxes(v, -1, -2) @ k
        heads = (memory @ numpy.swapaxes(q, -1, -2))[..., 0] * scale  # (B, H, K)
        return heads.reshape(heads.shape[0], -1) @ attn.W_O.T  # (B, D)

    def wrong_heads(tokens, W):  # features split as (K, H): head h gets h, h + H, ...
        B, T, _ = tokens.shape
        return numpy.transpose((tokens @ W.T).reshape(B, T, K, n_heads), (0, 3, 1, 2))

    q_wrong = wrong_heads(query_token[:, None, :], attn.W_Q)
    k_wrong, v_wrong = wrong_heads(removed_tokens, attn.W_K), wrong_heads(removed_tokens, attn.W_V)
    heads_wrong = ((numpy.swapaxes(v_wrong, -1, -2) @ k_wrong) @ numpy.swapaxes(q_wrong, -1, -2))
    heads_wrong = numpy.transpose(heads_wrong[..., 0], (0, 2, 1)) / math.sqrt(K)  # (B, K, H)
    wrong_split = heads_wrong.reshape(heads_wrong.shape[0], -1) @ attn.W_O.T  # (B, D)

    # the heads split right, but concatenated as (K, H): feature i·H + h of head h
    right_heads = ((numpy.swapaxes(_heads(removed_tokens, attn.W_V, n_heads), -1, -2)
                    @ _heads(removed_tokens, attn.W_K, n_heads))
                   @ numpy.swapaxes(q, -1, -2))[..., 0] / math.sqrt(K)  # (B, H, K)
    wrong_concat = numpy.swapaxes(right_heads, -1, -2).reshape(right_heads.shape[0], -1)
    wrong_concat = wrong_concat @ attn.W_O.T  # (B, D)

    with_query = numpy.concatenate([removed_tokens, query_token[:, None, :]], axis=1)
    big_q = query_token @ attn.W_Q.T  # (B, H·K): one head of width H·K
    big_memory = numpy.swapaxes(removed_tokens @ attn.W_V.T, -1, -2) @ (removed_tokens @ attn.W_K.T)
    one_head = ((big_memory @ big_q[..., None])[..., 0] / math.sqrt(K)) @ attn.W_O.T
    H_K, D = attn.W_Q.shape[0], removed_tokens.shape[-1]
    return [
        ("the 1/√K of the scores is missing: the attention weights are S = q kᵀ/√K, with K"
         " the width of one head", closed_form(removed_tokens, scale=1.0)),
        ("the scores are divided by √(H·K), the width of all heads together: K is the width"
         " of one head, K = H·K/H", closed_form(removed_tokens, scale=1.0 / math.sqrt(H_K))),
        ("the scores are divided by √D, the token width: K is the width of one head,"
         " K = H·K/H", closed_form(removed_tokens, scale=1.0 / math.sqrt(D))),
        ("the scores are divided by K, not by its square root: S = q kᵀ/√K",
         closed_form(removed_tokens, scale=1.0 / K)),
        ("the scores are divided by √H, the number of heads (`n_heads`): K is the width of"
         " one head, K = H·K/H (`attn.W_Q.shape[0] // n_heads`)",
         closed_form(removed_tokens, scale=1.0 / math.sqrt(n_heads))),
        ("that is a mean over the removed tokens: un-normalised linear attention sums"
         " v_c (k_cᵀ q_x) over c ∈ Y with no 1/|Y| (a softmax would normalise; this layer"
         " does not)", closed_form(removed_tokens) / removed_tokens.shape[1]),
        ("the memory is transposed: a removed token c contributes v_c (k_cᵀ q_x), so the"
         " matrix is Σ v_c k_cᵀ (values on the left), not Σ k_c v_cᵀ",
         closed_form(removed_tokens, transpose=True)),
        ("the sum runs over the removed tokens and the query: the query's own term"
         " v_x k_xᵀ q_x is in A(C\\Y, x) too, so it cancels from δA = A(C, x) − A(C\\Y, x)",
         closed_form(with_query)),
        ("the sum runs over the whole context: δA_x(Y) sums over the removed tokens Y only",
         closed_form(context)),
        ("one big head of width H·K: each head has its own K×K memory Σ v kᵀ and its own"
         " query; split q, k, v into H heads of width K, then concatenate", one_head),
        ("the heads are split the wrong way: the first head owns the features 0 … K − 1,"
         " the second K … 2K − 1, and so on, so reshape (…, H·K) to (…, H, K), not"
         " (…, K, H)", wrong_split),
        ("the heads are concatenated the wrong way: the split is right, but concatenating"
         " must undo it, the first head's K features first, then the second head's, so"
         " reshape (B, H, K) to"
         " (B, H·K) without swapping the last two axes", wrong_concat),
    ]


def check_linear_attention_delta_A(function: Callable, seed: int = 0) -> float:
    """Check ``function(attn, n_heads, removed_tokens, query_token) -> δA`` (B, D).

    The block has D = 4, H = 2 heads of width K = 3, linear attention and an attention
    skip, no LayerNorm; Y = 3 of N = 7 context tokens. The answer is compared with
    ``linear_attention_context_vector`` and with the δu = u_C − u_∅ of ``implicit_update``
    (equal to δA without LN2). Returns the relative residual; raises ExerciseError.
    """
    from ..params import init_params

    label = getattr(function, "__name__", "your function")
    params = init_params(CONFIG, seed=seed)
    attn = params.blocks[0].attn
    rng = numpy.random.default_rng(seed + 1)
    context = rng.standard_normal((5, 7, CONFIG.d_token))  # (B, N, D)
    query = rng.standard_normal((5, CONFIG.d_token))  # (B, D)
    removed_tokens = context[:, list(REMOVED), :]  # (B, |Y|, D)

    answer = call_answer(function, attn, CONFIG.n_heads, removed_tokens, query, name=label,
                         on_value_error="the tokens are rows and the weights are (out, in):"
                         " q = W_Q x is `query_token @ attn.W_Q.T` (B, H·K), k and v likewise"
                         " from `removed_tokens`, and δA = `heads @ attn.W_O.T` (B, D)")
    shape = getattr(answer, "shape", None)
    H_K = CONFIG.n_heads * CONFIG.d_head
    if shape is not None and tuple(shape[-1:]) == (H_K,) and H_K != CONFIG.d_token:
        raise ExerciseError(
            f"δA has shape {tuple(shape)}: the concatenated heads (width H·K = {H_K}) before the"
            f" output weight; apply W_O (D × H·K) to come back to the token width D ="
            f" {CONFIG.d_token}"
        )
    expected = linear_attention_context_vector(attn, CONFIG.n_heads, removed_tokens, query)
    residual = check_array(
        "δA", answer, expected, quiet=True,
        mistakes=linear_attention_mistakes(attn, CONFIG.n_heads, removed_tokens, query, context),
    )
    (update,) = implicit_update(params, CONFIG, context, query, removed=list(REMOVED))
    residual_update = check_array("δA against implicit_update's δu", answer, update.delta_u,
                                  quiet=True)
    print(f"✓ δA is right: against the package's closed form {residual:.1e}, against"
          f" implicit_update's δu = u_C − u_∅ {residual_update:.1e}")
    return residual


# -- von Oswald's weights ----------------------------------------------------------------


def _blocks(d: int, theta0: numpy.ndarray, corner: float = -1.0, transposed: bool = False):
    """[[I_d, 0], [0, 0]] and [[0, 0], [θ_0, corner]] (or θ_0 in the last column)."""
    W_QK = numpy.zeros((d + 1, d + 1))
    W_QK[:d, :d] = numpy.eye(d)
    W_V = numpy.zeros((d + 1, d + 1))
    if transposed:
        W_V[:d, d] = theta0
    else:
        W_V[d, :d] = theta0
    W_V[d, d] = corner
    return W_QK, W_V


def von_oswald_mistakes(d: int, eta: float, N: int, theta0) -> dict[str, list]:
    """The typical wrong weights, each with its hint: {"W_K": [...], "W_V": [...], "W_P": [...]}."""
    theta0 = numpy.asarray(theta0, dtype=numpy.float64).reshape(d)
    W_QK, W_V = _blocks(d, theta0)
    swapped = ("the key (query) and value roles are swapped: the keys and the query compare"
               " the inputs, k_jᵀ q = x_jᵀ x_q (so W_K = W_Q = [[I_d, 0], [0, 0]]); the value"
               " carries the residual θ_0 x_j − y_j (so W_V = [[0, 0], [θ_0, −1]])")
    return {
        "W_K": [
            (swapped, W_V),
            ("the key and the query must not see the y-slot: only x_j and x_q enter"
             " k_jᵀ q = x_jᵀ x_q, so the last row and column of W_K and W_Q are zero",
             numpy.eye(d + 1)),
            ("the key and the query act on whole tokens (x; y) of width d + 1: W_K = W_Q ="
             " [[I_d, 0], [0, 0]], a (d+1, d+1) matrix whose last row and column are zero",
             numpy.eye(d)),
        ],
        "W_V": [
            ("the −1 has the wrong sign: the value's y-entry must be θ_0 x_j − y_j, the"
             " residual (prediction minus label) that the gradient of L multiplies",
             _blocks(d, theta0, corner=1.0)[1]),
            ("θ_0 sits in the transposed block (the last column): the value's y-entry is"
             " θ_0 x_j − y_j, so θ_0 goes in the last ROW, under the d input columns",
             _blocks(d, theta0, transposed=True)[1]),
            ("θ_0 is missing from the last row: with θ_0 = 0 this is right, but the value"
             " must carry the residual θ_0 x_j − y_j of the starting weights",
             _blocks(d, numpy.zeros(d))[1]),
            ("θ_0 has the wrong sign: the value's y-entry is the residual θ_0 x_j − y_j, so"
             " the last row is (θ_0, −1)", _blocks(d, -theta0)[1]),
            (swapped, W_QK),
            ("W_V has the wrong sign: the value is θ_0 x_j − y_j, not y_j − θ_0 x_j (with"
             " W_P = +(η/N) I the layer subtracts η ∇L)", -W_V),
            ("the top-left block of W_V must be zero, not I_d: the value is"
             " W_V e_j = (0; θ_0 x_j − y_j), so the layer leaves x_q alone and writes into the"
             " y-slot only", W_V + W_QK),
            ("θ_0 sits in both the last row and the last column: the value's y-entry is"
             " θ_0 x_j − y_j, so θ_0 goes in the last ROW only and the x-part of the value"
             " stays 0", W_V + _blocks(d, theta0, corner=0.0, transposed=True)[1]),
            ("η/N sits in W_V: with W_P = I that is the same layer, but von Oswald's value"
             " carries the residual θ_0 x_j − y_j itself, W_V = [[0, 0], [θ_0, −1]], and"
             " W_P = (η/N) I supplies the step", eta / N * W_V),
            ("that is W_P = (η/N) I: return the four matrices in the order"
             " (W_K, W_Q, W_V, W_P)", eta / N * numpy.eye(d + 1)),
        ],
        "W_P": [
            ("the 1/N is missing: L(θ) = (1/2N) Σ_j (θ x_j − y_j)² is a mean over the N"
             " context pairs, so W_P = (η/N) I", eta * numpy.eye(d + 1)),
            ("the step size η is missing: W_P = (η/N) I", numpy.eye(d + 1) / N),
            ("that is the package's W_O = √K W_P, which cancels the 1/√K of its scores;"
             " von Oswald's layer has no 1/√K, so W_P = (η/N) I",
             eta / N * math.sqrt(d + 1) * numpy.eye(d + 1)),
            ("W_P has the wrong sign: with W_V carrying θ_0 x_j − y_j, the layer adds"
             " +(η/N) Σ (θ_0 x_j − y_j) x_jᵀ x_q = (θ_0 − θ_1) x_q",
             -eta / N * numpy.eye(d + 1)),
            ("1/(N+1) counts the query as a pair: the mean of L runs over the N context"
             " pairs only, so W_P = (η/N) I", eta / (N + 1) * numpy.eye(d + 1)),
            ("W_P acts on whole tokens (x; y) of width d + 1, not on x alone: W_P ="
             " (η/N) I_{d+1}, a (d+1, d+1) matrix", eta / N * numpy.eye(d)),
            ("W_P is a matrix, (η/N) I_{d+1} of shape (d+1, d+1), not the number η/N",
             numpy.asarray(eta / N)),
            ("the 1/2 of L(θ) = (1/2N) Σ_j (θ x_j − y_j)² cancels against the 2 of the"
             " square's derivative: ∇L(θ_0) = (1/N) Σ_j (θ_0 x_j − y_j) x_jᵀ, so W_P ="
             " (η/N) I", eta / (2 * N) * numpy.eye(d + 1)),
            ("that is W_V: return the four matrices in the order (W_K, W_Q, W_V, W_P)", W_V),
            ("(η/N) in the y-entry alone gives the same layer here (the value's x-part is"
             " zero, so W_P's other diagonal entries multiply 0), but von Oswald's P is"
             " (η/N) I: write the identity", eta / N * numpy.diag([0.0] * d + [1.0])),
        ],
    }


def von_oswald_layer(W_K, W_Q, W_V, W_P, tokens: numpy.ndarray) -> numpy.ndarray:
    """e_q + W_P Σ_j W_V e_j (W_K e_j)ᵀ W_Q e_q for tokens (B, N+1, D); returns (B, D).

    The sum runs over the N context tokens e_j only (von Oswald et al. 2023, eq. of
    Proposition 1); e_q is the last token.
    """
    context, e_q = tokens[:, :-1, :], tokens[:, -1, :]  # (B, N, D), (B, D)
    v, k, q = context @ W_V.T, context @ W_K.T, e_q @ W_Q.T  # (B, N, D), (B, N, D), (B, D)
    return e_q + numpy.einsum("bjv,bj->bv", v, numpy.einsum("bjk,bk->bj", k, q)) @ W_P.T


def check_von_oswald_weights(function: Callable, seed: int = 0) -> float:
    """Check ``function(d, eta, N, theta0) -> (W_K, W_Q, W_V, W_P)``, each (d+1, d+1).

    Draws θ_0 ≠ 0 (so that a transposed block shows), compares each matrix with the
    package's ``von_oswald_attention`` (W_P = W_O/√K), then runs the reader's layer twice,
    in von Oswald's form and as a block of this package, against an explicit gradient
    step θ_1 = θ_0 − η ∇L(θ_0): the query's y-slot must become y_q + (θ_0 − θ_1) x_q.
    Returns the residual of the layer against the explicit step; raises ExerciseError.
    """
    seed = check_seed(seed)
    label = getattr(function, "__name__", "your function")
    d, eta, N = 2, 0.3, 8
    rng = numpy.random.default_rng(seed)
    theta0 = rng.standard_normal(d)  # (d,)
    answer = call_answer(function, d, eta, N, theta0.copy(), name=label)
    if not isinstance(answer, (tuple, list)) or len(answer) != 4:
        got = type(answer).__name__
        if isinstance(answer, (tuple, list)):
            got += f" of {len(answer)} item{'s' if len(answer) != 1 else ''}"
        raise ExerciseError(f"{label} must return the four matrices (W_K, W_Q, W_V, W_P),"
                            f" got {got}")
    attn, _ = von_oswald_attention(d, eta, N, theta0)
    K = attn.W_Q.shape[0]
    expected = {"W_K": attn.W_K, "W_Q": attn.W_Q, "W_V": attn.W_V,
                "W_P": attn.W_O / math.sqrt(K)}
    mistakes = von_oswald_mistakes(d, eta, N, theta0)
    mistakes["W_Q"] = mistakes["W_K"]
    answers = dict(zip(("W_K", "W_Q", "W_V", "W_P"), answer))
    for name in ("W_K", "W_Q", "W_V", "W_P"):
        check_array(name, answers[name], expected[name], mistakes=mistakes[name], quiet=True)
    W_K, W_Q, W_V, W_P = (numpy.asarray(answers[n], dtype=numpy.float64)
                          for n in ("W_K", "W_Q", "W_V", "W_P"))

    # the explicit step: θ_1 = θ_0 − η (1/N) Σ_j (θ_0 x_j − y_j) x_j
    B = 6
    x = rng.standard_normal((B, N, d))  # (B, N, d)
    w, x_q = rng.standard_normal((B, d)), rng.standard_normal((B, d))  # (B, d) each
    y = numpy.einsum("bjd,bd->bj", x, w)  # (B, N)
    gradient = numpy.einsum("bj,bjd->bd", x @ theta0 - y, x) / N  # ∇L(θ_0), (B, d)
    theta1 = theta0 - eta * gradient  # (B, d)
    y_q = x_q @ theta0  # the query's y-slot holds θ_0 x_q
    tokens = numpy.concatenate([numpy.concatenate([x, y[..., None]], axis=-1),
                                numpy.concatenate([x_q, y_q[:, None]], axis=-1)[:, None, :]],
                               axis=1)  # (B, N+1, d+1)
    target = y_q + numpy.sum((theta0 - theta1) * x_q, axis=-1)  # y_q + (θ_0 − θ_1) x_q
    layer = von_oswald_layer(W_K, W_Q, W_V, W_P, tokens)[:, d]
    residual = check_array("the y-slot after your layer", layer, target, quiet=True)

    # the same weights as a block of this package (the query also attends to itself; its
    # value θ_0 x_q − y_q is 0 here) with W_O = √K W_P for the 1/√K of the scores
    config, params = von_oswald_model(d, eta, N, theta0)
    block = params.blocks[0]
    mine = AttentionParams(W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=math.sqrt(K) * W_P)
    model = ModelParams(blocks=(BlockParams(attn=mine, mlp=block.mlp, ln1=None, ln2=None),))
    out, _ = forward(model, config, tokens, last_only=True)
    residual_block = check_array("the y-slot of the package's block with your weights",
                                 out[:, -1, d], target, quiet=True)
    print(f"✓ W_K, W_Q, W_V, W_P are right: the y-slot becomes y_q + (θ_0 − θ_1) x_q for"
          f" an explicit step θ_1 = θ_0 − η ∇L(θ_0) (residual {residual:.1e}; as a block of"
          f" the package {residual_block:.1e})")
    return residual
