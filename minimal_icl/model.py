"""The whole model: a stack of blocks, one forward/backward pair.

    forward(params, config, tokens)        -> (out, cache)      out (B, T, D)
    backward(dout, cache)                  -> (dtokens, grads)  grads: a ModelParams

The prediction for in-context regression is the last coordinate of the output at the
last (query) token: ``out[:, -1, -1]``.
"""

from __future__ import annotations

from typing import NamedTuple

from .backend import Array, namespace
from .block import BlockPatch, block_backward, block_forward
from .config import TransformerConfig
from .params import ModelParams


class ModelCache(NamedTuple):
    blocks: tuple  # tuple[BlockCache, ...]
    inputs: tuple  # tuple of each block's input z (B, T, D)
    last_only: bool


def check_tokens(tokens: Array, config: TransformerConfig, name: str = "tokens") -> None:
    """Raise a ValueError naming the problem if ``tokens`` is not a finite (B, T, D) array."""
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{name} must have shape (B, T, d_token), got shape {shape}")
    if shape[-1] != config.d_token:
        raise ValueError(
            f"{name} have width {shape[-1]} but config.d_token = {config.d_token}"
        )
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name} must hold at least one prompt of one token, got shape {shape}")
    xp = namespace(tokens)
    if not bool(xp.all(xp.isfinite(tokens))):
        raise ValueError(f"{name} contain NaN or infinity")


def check_params(params: ModelParams, config: TransformerConfig) -> None:
    """Raise a ValueError if ``params`` do not have the shapes ``config`` asks for."""
    if not isinstance(params, ModelParams) or len(params.blocks) != config.n_blocks:
        n = len(params.blocks) if isinstance(params, ModelParams) else None
        raise ValueError(
            f"params must be a ModelParams with {config.n_blocks} blocks, got {type(params).__name__}"
            f" with {n} blocks"
        )
    D, HK, M = config.d_token, config.n_heads * config.d_head, config.d_mlp
    expected = {"W_Q": (HK, D), "W_K": (HK, D), "W_V": (HK, D), "W_O": (D, HK),
                "W1": (M, D), "b1": (M,), "W2": (D, M), "b2": (D,)}
    for l, block in enumerate(params.blocks):
        for ln_name, ln in (("ln1", block.ln1), ("ln2", block.ln2)):
            if (ln is not None) != config.layer_norm:
                raise ValueError(
                    f"block {l}: {ln_name} is {'set' if ln is not None else 'None'} but"
                    f" config.layer_norm = {config.layer_norm}"
                )
            if ln is not None:
                for name, value in zip(ln._fields, ln):
                    if tuple(value.shape) != (D,):
                        raise ValueError(
                            f"block {l}: {ln_name}.{name} has shape {tuple(value.shape)},"
                            f" config expects {(D,)}"
                        )
        for record in (block.attn, block.mlp):
            for name, value in zip(record._fields, record):
                if tuple(value.shape) != expected[name]:
                    raise ValueError(
                        f"block {l}: {name} has shape {tuple(value.shape)}, config expects {expected[name]}"
                    )


def check_patch(patch: BlockPatch, config: TransformerConfig, n_prompts: int, l: int) -> None:
    """Raise a ValueError unless ``patch`` holds delta_W (B, M, D) and delta_b (B, D)."""
    B, M, D = n_prompts, config.d_mlp, config.d_token
    for name, expected in (("delta_W", (B, M, D)), ("delta_b", (B, D))):
        shape = tuple(getattr(patch, name).shape)
        if shape != expected:
            raise ValueError(
                f"patch for block {l}: {name} has shape {shape}, expected {expected}"
                f" (one per prompt: tokens hold {B} prompts)"
            )


def forward(
    params: ModelParams,
    config: TransformerConfig,
    tokens: Array,
    patches: tuple | None = None,
    last_only: bool = False,
) -> tuple[Array, ModelCache]:
    """Run the model on ``tokens`` (B, T, D).

    Args:
        patches: None, or one ``BlockPatch`` (or None) per block: per-prompt updates of
            each block's W1 and b2, as returned by ``implicit_update``.
        last_only: compute the last block at the last position only and return
            (B, 1, D). Every earlier block still runs on all positions (the last block's
            keys and values need them). This is what training uses: the loss reads the
            query position only.

    Returns (out, cache): out (B, T, D), or (B, 1, D) if ``last_only``.
    """
    check_tokens(tokens, config)
    if patches is not None and len(patches) != config.n_blocks:
        raise ValueError(f"patches must hold one entry per block ({config.n_blocks}), got {len(patches)}")
    L = config.n_blocks
    x = tokens
    caches, inputs = [], []
    for l, block_params in enumerate(params.blocks):
        patch = None if patches is None else patches[l]
        if patch is not None:
            check_patch(patch, config, tokens.shape[0], l)
        inputs.append(x)
        x, cache = block_forward(x, block_params, config, patch, last_only and l == L - 1)
        caches.append(cache)
    return x, ModelCache(blocks=tuple(caches), inputs=tuple(inputs), last_only=last_only)


def backward(dout: Array, cache: ModelCache) -> tuple[Array, ModelParams]:
    """Gradients of a scalar loss given dout = ∂loss/∂out; returns (dtokens, grads)."""
    grads = []
    dx = dout
    # forward was: x_{l+1} = block_l(x_l), so walk the blocks backwards
    for block_cache in reversed(cache.blocks):
        dx, dblock = block_backward(dx, block_cache)
        grads.append(dblock)
    return dx, ModelParams(blocks=tuple(reversed(grads)))


def predict(params: ModelParams, config: TransformerConfig, tokens: Array, patches=None) -> Array:
    """The in-context regression prediction: last coordinate of the output at the query, (B,)."""
    out, _ = forward(params, config, tokens, patches=patches, last_only=True)
    return out[:, -1, -1]
