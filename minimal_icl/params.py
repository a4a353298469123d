"""Parameter records and their initialisation.

Parameters are small NamedTuple records of arrays, nested per block; gradients come back
in the same record types (``backward`` returns a ``ModelParams`` of gradients). Weights
use the paper's orientation (out, in): a dense layer computes ``x Wᵀ + b`` on row-vector
tokens, which is ``W z + b`` on a column vector z, so ``MLPParams.W1`` is exactly the W
of Theorem 2.2 in v1 of Dherin et al. (2025).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy

from .backend import Array
from .config import TransformerConfig
from .rnn import RNNParams  # noqa: F401 - the recurrent layer's record, re-exported here


class LayerNormParams(NamedTuple):
    gain: Array  # (D,)
    bias: Array  # (D,)


class AttentionParams(NamedTuple):
    W_Q: Array  # (H·K, D)
    W_K: Array  # (H·K, D)
    W_V: Array  # (H·K, D)
    W_O: Array  # (D, H·K)


class MLPParams(NamedTuple):
    W1: Array  # (M, D)   the first dense layer: "W" in the theorems
    b1: Array  # (M,)
    W2: Array  # (D, M)
    b2: Array  # (D,)     the output bias b′ (the paper's skip form, docs/theory.md §3)


class BlockParams(NamedTuple):
    attn: AttentionParams | RNNParams  # the contextual layer (RNNParams: contextual_layer="rnn")
    mlp: MLPParams
    ln1: LayerNormParams | None  # None unless config.layer_norm
    ln2: LayerNormParams | None  # None unless config.layer_norm


class ModelParams(NamedTuple):
    blocks: tuple  # tuple[BlockParams, ...], one per block


def init_params(
    config: TransformerConfig,
    seed: int = 0,
    dtype=numpy.float64,
    xp=None,
    device=None,
) -> ModelParams:
    """Random parameters for ``config``: weights ~ N(0, 1/fan_in), biases 0 (LayerNorm's
    bias β too), LayerNorm's gain γ = 1.

    The contextual layer is attention (W_Q, W_K, W_V, W_O) or, for
    ``contextual_layer="rnn"``, the recurrent layer (W_in, W_s, W_out; b_s = 0).

    Numbers are drawn on the host with ``numpy.random.default_rng(seed)`` and moved to
    ``xp`` (default NumPy; also "numpy" or "cupy" by name) on ``device``, so one seed
    gives the same model everywhere. ``seed`` is an int ≥ 0 and ``dtype`` a real
    floating-point type (float64 by default); anything else raises, naming the argument.
    The configuration is checked first, and one whose parameters would not fit in the
    machine's memory raises a ValueError before any number is drawn.
    """
    from .validation import (  # validation imports this module's records: import it here
        check_config,
        check_device,
        check_float_dtype,
        check_model_size,
        check_namespace,
        check_seed,
    )

    check_config(config)
    check_model_size(config)
    seed = check_seed(seed)
    xp = check_namespace(xp)
    check_device(xp, device)
    dtype = check_float_dtype(xp, dtype)
    rng = numpy.random.default_rng(seed)
    D, H, K, M = config.d_token, config.n_heads, config.d_head, config.d_mlp
    S = config.d_state

    def dense(n_out, n_in):
        w = rng.standard_normal((n_out, n_in)) / numpy.sqrt(n_in)
        return xp.asarray(w, dtype=dtype, device=device)

    def const(n, value):
        return xp.asarray(numpy.full(n, value), dtype=dtype, device=device)

    def layer_norm():
        return LayerNormParams(gain=const(D, 1.0), bias=const(D, 0.0)) if config.layer_norm else None

    blocks = []
    for _ in range(config.n_blocks):
        if config.contextual_layer == "rnn":
            attn = RNNParams(W_in=dense(S, D), W_s=dense(S, S), b=const(S, 0.0), W_out=dense(D, S))
        else:
            attn = AttentionParams(
                W_Q=dense(H * K, D), W_K=dense(H * K, D), W_V=dense(H * K, D), W_O=dense(D, H * K)
            )
        mlp = MLPParams(W1=dense(M, D), b1=const(M, 0.0), W2=dense(D, M), b2=const(D, 0.0))
        blocks.append(BlockParams(attn=attn, mlp=mlp, ln1=layer_norm(), ln2=layer_norm()))
    return ModelParams(blocks=tuple(blocks))
