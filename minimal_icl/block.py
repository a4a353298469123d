"""One transformer block: attention, then MLP, with optional skips and pre-LayerNorm.

    u1  = LN1(z)              if layer_norm else z
    A   = Attention(u1)       (or the recurrent layer, contextual_layer="rnn": rnn.py)
    h   = z + A               if attn_skip  else A
    u   = LN2(h)              if layer_norm else h          the MLP input
    out = h + MLP(u)          if mlp_skip   else MLP(u)

A ``BlockPatch`` (Theorem 2.2 in v1 of Dherin et al. 2025) replaces, per prompt, the MLP's
first weight W1 by W1 + ΔW and its output bias b2 by b2 + Δb′.
"""

from __future__ import annotations

from typing import NamedTuple

from .attention import AttentionCache, attention_backward, attention_forward
from .attention_fast import attention_backward_fast
from .backend import Array, namespace
from .config import TransformerConfig
from .layernorm import LayerNormCache, layernorm_backward, layernorm_forward
from .mlp import MLPCache, mlp_backward, mlp_forward
from .params import BlockParams, MLPParams
from .rnn import RNNCache, rnn_backward, rnn_forward


class BlockPatch(NamedTuple):
    """A per-prompt change of one block's MLP weights."""

    delta_W: Array  # (B, M, D) added to W1
    delta_b: Array  # (B, D)    added to b2: Δb′


class BlockCache(NamedTuple):
    ln1: LayerNormCache | None
    attn: AttentionCache | RNNCache  # the contextual layer's cache
    ln2: LayerNormCache | None
    mlp: MLPCache
    A: Array  # (B, Tq, D) attention output (Tq = T, or 1 with last_only)
    h: Array  # (B, Tq, D) the residual stream after attention (h = A without attn_skip)
    u: Array  # (B, Tq, D) the MLP input LN2(h) (u = h without layer_norm)
    patched: bool  # whether the MLP ran with per-prompt weights
    attn_skip: bool
    mlp_skip: bool


def block_forward(
    z: Array,
    p: BlockParams,
    config: TransformerConfig,
    patch: BlockPatch | None = None,
    last_only: bool = False,
) -> tuple[Array, BlockCache]:
    """Run one block on z (B, T, D); returns (out, BlockCache), out (B, T, D), or (B, 1, D)
    if ``last_only`` (the output at the query only; the contextual layer still reads every
    token). ``patch``: None, or a ``BlockPatch`` applied to every position of each prompt.
    """
    u1, ln1 = layernorm_forward(z, p.ln1, config.ln_eps) if config.layer_norm else (z, None)
    if config.contextual_layer == "rnn":
        A, attn = rnn_forward(u1, p.attn, last_only)  # (B, Tq, D)
    else:
        A, attn = attention_forward(
            u1, p.attn, config.n_heads, config.attention, config.causal, last_only
        )  # (B, Tq, D)
    z_q = z[:, -1:, :] if last_only else z
    h = z_q + A if config.attn_skip else A
    u, ln2 = layernorm_forward(h, p.ln2, config.ln_eps) if config.layer_norm else (h, None)

    mlp_params = p.mlp
    if patch is not None:
        mlp_params = MLPParams(
            W1=p.mlp.W1 + patch.delta_W, b1=p.mlp.b1, W2=p.mlp.W2, b2=p.mlp.b2 + patch.delta_b
        )
    m, mlp = mlp_forward(u, mlp_params, config.activation)
    out = h + m if config.mlp_skip else m
    cache = BlockCache(
        ln1, attn, ln2, mlp, A, h, u, patch is not None, config.attn_skip, config.mlp_skip
    )
    return out, cache


def block_backward(
    dout: Array, cache: BlockCache, fast: bool = False
) -> tuple[Array, BlockParams]:
    """Returns (dz, BlockParams of gradients).

    By default the attention backward is the textbook ``attention_backward``, the mirror
    of the forward; ``fast=True`` runs ``attention_backward_fast`` (the same gradients by
    cheaper products).

    With a patch, the gradients of the per-prompt W1 + ΔW and b2 + Δb′ are summed over
    prompts: they are the gradients with respect to the shared W1 and b2 (and to a
    shared ΔW and Δb′).
    """
    c = cache
    # forward was: out = h + m (or out = m)
    dm = dout
    # forward was: m = MLP(u)
    du, dmlp = mlp_backward(dm, c.mlp)
    if c.patched:
        xp = namespace(dmlp.W1)
        dmlp = dmlp._replace(W1=xp.sum(dmlp.W1, axis=0), b2=xp.sum(dmlp.b2, axis=0))
    # forward was: u = LN2(h) (or u = h)
    if c.ln2 is not None:
        dh, dln2 = layernorm_backward(du, c.ln2)
    else:
        dh, dln2 = du, None
    if c.mlp_skip:  # forward was: out = h + m, so h also gets dout
        dh = dh + dout
    # forward was: h = z_q + A (or h = A)
    dA = dh
    if isinstance(c.attn, RNNCache):
        du1, dattn = rnn_backward(dA, c.attn)
    else:
        du1, dattn = (attention_backward_fast if fast else attention_backward)(dA, c.attn)
    # forward was: u1 = LN1(z) (or u1 = z)
    if c.ln1 is not None:
        dz, dln1 = layernorm_backward(du1, c.ln1)
    else:
        dz, dln1 = du1, None
    # forward was: h = z_q + A, so z's query rows (every row without last_only) also get dh
    if c.attn_skip:
        if c.attn.last_only:
            xp = namespace(dz)
            dz = xp.concat([dz[:, :-1, :], dz[:, -1:, :] + dh], axis=1)
        else:
            dz = dz + dh
    return dz, BlockParams(attn=dattn, mlp=dmlp, ln1=dln1, ln2=dln2)
