"""The whole model: a stack of blocks, one forward/backward pair.

    forward(params, config, tokens)        -> (out, cache)      out (B, T, D)
    backward(dout, cache)                  -> (dtokens, grads)  grads: a ModelParams

The prediction for in-context regression is the last coordinate of the output at the
last (query) token: ``out[:, -1, -1]``.
"""

from __future__ import annotations

from typing import NamedTuple

from .backend import Array
from .block import block_backward, block_forward
from .config import TransformerConfig
from .params import ModelParams
from .validation import (  # noqa: F401 - check_params is also imported from here
    check_bool,
    check_dout,
    check_forward_finite,
    check_params,
    check_patches,
    check_tokens,
    quiet_checked_pass,
)


class ModelCache(NamedTuple):
    blocks: tuple  # tuple[BlockCache, ...]
    inputs: tuple  # tuple of each block's input z (B, T, D)
    last_only: bool


def forward(
    params: ModelParams,
    config: TransformerConfig,
    tokens: Array,
    patches: tuple | None = None,
    last_only: bool = False,
    check_finite: bool = True,
) -> tuple[Array, ModelCache]:
    """Run the model on ``tokens`` (B, T, D).

    Args:
        patches: None, or one entry per block, each None, a ``BlockPatch`` or an
            ``ImplicitUpdate`` (delta_W (B, M, D), delta_b (B, D)): per-prompt updates of
            each block's W1 and b2; ``implicit_update`` returns such a tuple.
        last_only: compute the last block at the last position only and return
            (B, 1, D). Every earlier block still runs on all positions (the last block's
            keys and values need them), and a recurrent layer (``contextual_layer="rnn"``)
            still runs its whole recurrence: only its read-out is taken at the last
            position. This is what training uses: the loss reads the query position only.
        check_finite: after the pass, read one boolean back from the device: the tokens
            and the output are finite, the tokens hold no subnormal numbers and no
            LayerNorm variance overflowed (a ValueError names the cause otherwise: bad
            tokens, a non-finite parameter, or an overflow inside the pass; on NumPy the
            pass's RuntimeWarnings are silenced, the error says it all). Training
            passes False and checks its loss.

    Shapes, dtypes, the parameters against ``config`` and the patches are checked first
    (``minimal_icl.validation``; docs/validation.md), which reads no array values.
    Returns (out, cache): out (B, T, D), or (B, 1, D) if ``last_only``.
    """
    check_params(params, config)
    check_tokens(tokens, config, params)
    check_patches(patches, config, tokens.shape[0])
    last_only = check_bool("last_only", last_only)
    check_finite = check_bool("check_finite", check_finite)
    L = config.n_blocks
    x = tokens
    caches, inputs = [], []
    with quiet_checked_pass(check_finite):
        for l, block_params in enumerate(params.blocks):
            patch = None if patches is None else patches[l]
            inputs.append(x)
            x, cache = block_forward(x, block_params, config, patch, last_only and l == L - 1)
            caches.append(cache)
    if check_finite:
        check_forward_finite(tokens, x, params, patches, inputs, caches)
    return x, ModelCache(blocks=tuple(caches), inputs=tuple(inputs), last_only=last_only)


def backward(dout: Array, cache: ModelCache, fast: bool = False) -> tuple[Array, ModelParams]:
    """Gradients of a scalar loss given dout = ∂loss/∂out (shaped like forward's out);
    returns (dtokens (B, T, D), grads: a ModelParams of gradients shaped like params).

    By default each block's backward is the textbook one (``attention_backward``, the
    mirror of the forward); ``fast=True`` takes each attention backward by
    ``attention_backward_fast``. Both give the same gradients to rounding
    (tests/test_attention_fast.py). Training runs ``model_fast`` instead, the same
    numbers by fewer, larger products.
    """
    check_dout(dout, cache)
    fast = check_bool("fast", fast)
    grads = []
    dx = dout
    # forward was: z_{l+1} = block_l(z_l) (the loop's x), so walk the blocks backwards
    for block_cache in reversed(cache.blocks):
        dx, dblock = block_backward(dx, block_cache, fast)
        grads.append(dblock)
    return dx, ModelParams(blocks=tuple(reversed(grads)))


def predict(params: ModelParams, config: TransformerConfig, tokens: Array, patches=None) -> Array:
    """The in-context regression prediction: last coordinate of the output at the query, (B,)."""
    out, _ = forward(params, config, tokens, patches=patches, last_only=True)
    return out[:, -1, -1]
