"""Every position of a prompt is a query: one rank-1 update per position and block.

Theorem 2.2 (Dherin et al. 2025, v1) reads the block's output at the last token. Nothing
in its proof uses that the query is last (Innocenti & Achour 2025, arXiv:2512.11255):
any position t can play the query, its context being what it attends to, the tokens
before it with a causal mask and all the other tokens without one. With u_t, h_t the
MLP input and residual at position t in the run of the whole prompt (the with-context
state) and u_∅,t, h_∅,t the same for position t's input run alone (a prompt of one
token),

    ΔW_t = W (u_t − u_∅,t) u_∅,tᵀ / ‖u_∅,t‖²,   Δb′_t = h_t − h_∅,t (with an MLP skip),

and the block run on position t's input alone, patched, gives position t's output:
(W + ΔW_t) u_∅,t = W u_t, and h_∅,t + Δb′_t = h_t. Every with-context state comes from
one run of the whole prompt (a causal mask makes that run's position t exactly the run
of the prefix up to t), and every position's alone state from one run of the T tokens
as T one-token prompts: all T patches of a block cost two passes of it.

Stacks, block by block (docs/theory.md §3): block l's alone state is block l run on
position t's with-context input to block l. Patched block l − 1 returns exactly that
input, so by induction the patched blocks reproduce position t's output of every block.

Innocenti & Achour's variant reproduces every position from the LAST token alone: with
u_x, h_x the last token run alone,

    ΔW_t = W (u_t − u_x) u_xᵀ / ‖u_x‖²,   Δb′_t = h_t − h_x,

so (W + ΔW_t) u_x = W u_t and the one-token prompt [x] gives position t's output. In a
stack the patched first block hands position t's with-context input to the second
block, so from the second block on the variant's patches are the per-position ones.

Shapes: B prompts, T tokens, D token width, M MLP width.
Reference: Dherin et al. (2025), arXiv:2507.16003, Theorem 2.2 in v1; Innocenti &
Achour (2025), arXiv:2512.11255.
"""

from __future__ import annotations

from typing import Sequence

from .backend import Array, namespace
from .block import block_forward
from .config import TransformerConfig
from .implicit import DegenerateQueryError, ImplicitUpdate, norms, rank_one_update
from .model import forward
from .params import ModelParams
from .validation import (
    check_bool,
    check_params,
    check_position,
    check_position_updates,
    check_tokens,
)


class DegeneratePositionError(DegenerateQueryError):
    """u_∅ = 0 at some positions: ΔW_t divides by ‖u_∅,t‖², and no update exists there.

    A ``DegenerateQueryError`` that also names the positions.

    Attributes:
        prompts:   the prompt (batch index) of each degenerate position.
        positions: the position t of each, paired with ``prompts``.
        block:     the block whose MLP input is zero.
    """

    def __init__(self, prompts: Sequence[int], positions: Sequence[int], block: int,
                 vector: str = "u_∅"):
        self.prompts = tuple(int(i) for i in prompts)
        self.positions = tuple(int(t) for t in positions)
        self.block = int(block)
        pairs = ", ".join(
            f"(prompt {b}, position {t})" for b, t in zip(self.prompts, self.positions)
        )
        ValueError.__init__(
            self,
            f"implicit update undefined at block {self.block} for {pairs}: the MLP input of the"
            f" token run alone, {vector}, is the zero vector, and"
            f" ΔW_t = W δu_t {vector}ᵀ/‖{vector}‖²"
            f" divides by ‖{vector}‖² (Theorem 2.2 assumes it is non-zero). A zero token gives"
            f" this with attention, without LayerNorm or with LayerNorm biases 0 (the"
            f" initial ones); change that token, or use a model with an attention skip and a"
            f" non-zero LayerNorm bias.",
        )


def _check_nonzero_positions(u_without: Array, block: int, vector: str) -> None:
    """DegeneratePositionError naming (prompt, position) wherever u_without (B, T, D) = 0."""
    xp = namespace(u_without)
    zero = norms(u_without) == 0  # (B, T)
    if bool(xp.any(zero)):
        B, T = zero.shape
        bad = [(b, t) for b in range(B) for t in range(T) if bool(zero[b, t])]
        raise DegeneratePositionError([b for b, _ in bad], [t for _, t in bad], block, vector)


def _alone(z: Array, block_params, config: TransformerConfig) -> tuple[Array, Array]:
    """Block run on every position of z (B, T, D) as a prompt of one token: (u, h) (B, T, D)."""
    xp = namespace(z)
    B, T, D = z.shape
    _, cache = block_forward(xp.reshape(z, (B * T, 1, D)), block_params, config)
    return xp.reshape(cache.u, (B, T, D)), xp.reshape(cache.h, (B, T, D))


def _update(W: Array, u_C: Array, h_C: Array, u_0: Array, h_0: Array,
            config: TransformerConfig, block: int) -> ImplicitUpdate:
    """The rank-1 update at every position: u_C, h_C (B, T, D); u_0, h_0 (B, T, D) or
    broadcastable to it. Returns an ImplicitUpdate with a position axis after B."""
    xp = namespace(u_C, u_0)
    u_0 = xp.broadcast_to(u_0, u_C.shape)
    h_0 = xp.broadcast_to(h_0, h_C.shape)
    _check_nonzero_positions(u_0, block, "u_∅")
    delta_u = u_C - u_0  # (B, T, D)
    delta_W, column, row = rank_one_update(W, delta_u, u_0, block=block)  # (B, T, M, D)
    delta_b = h_C - h_0 if config.mlp_skip else xp.zeros_like(h_C)  # (B, T, D)
    return ImplicitUpdate(delta_W, delta_b, column, row, delta_u, u_0)


def implicit_update_every_position(
    params: ModelParams, config: TransformerConfig, tokens: Array
) -> tuple[ImplicitUpdate, ...]:
    """The rank-1 update of every block at every position t, from one run of the prompt.

    For block l and position t (module docstring; docs/theory.md §3):

        z_l,t      = position t's input to block l in the run on ``tokens``
        u_t, h_t   = block l's MLP input and residual at t in that run (with context)
        u_∅, h_∅   = the same for block l run on z_l,t alone (a one-token prompt)
        ΔW_l,t = W_l (u_t − u_∅) u_∅ᵀ / ‖u_∅‖²,   Δb′_l,t = h_t − h_∅ (zeros without MLP skip).

    Then, for every t, ``forward(params, config, tokens[:, t:t+1], patches=at_position(
    updates, t))`` equals ``forward(params, config, tokens)[:, t]`` to rounding: position
    t's context is what it attends to (the tokens before it with a causal mask, all the
    others without). For a causal model ΔW_l,t is the patch that ``implicit_update``
    gives for the prompt tokens[:, :t+1]; without a mask (and without positional
    information) it is the one for the prompt with token t moved to the end.

    tokens (B, T, D). Returns one ``ImplicitUpdate`` per block whose arrays carry the
    position axis after the batch axis: delta_W (B, T, M, D), delta_b (B, T, D),
    column (B, T, M), row, delta_u, u_without (B, T, D).
    Raises DegeneratePositionError (a DegenerateQueryError) naming prompt, position and
    block where u_∅ = 0. A causal model's first position has an empty context: its
    patch is zero.
    Reference: Innocenti & Achour (2025), arXiv:2512.11255; Dherin et al. (2025),
    Theorem 2.2 in v1.
    """
    check_params(params, config)
    check_tokens(tokens, config, params)
    _, full = forward(params, config, tokens)
    updates = []
    for l, block_params in enumerate(params.blocks):
        u_0, h_0 = _alone(full.inputs[l], block_params, config)  # (B, T, D)
        updates.append(
            _update(block_params.mlp.W1, full.blocks[l].u, full.blocks[l].h, u_0, h_0, config, l)
        )
    return tuple(updates)


def implicit_update_from_last_token(
    params: ModelParams, config: TransformerConfig, tokens: Array, per_block: bool = False
) -> tuple[ImplicitUpdate, ...]:
    """Innocenti & Achour's variant: every position t reproduced from the last token x alone.

    First block: with u_x, h_x the MLP input and residual of the last token run alone,

        ΔW_t = W (u_t − u_x) u_xᵀ / ‖u_x‖²,   Δb′_t = h_t − h_x (zeros without MLP skip),

    so (W + ΔW_t) u_x = W u_t. Later blocks: the patched first block returns position
    t's with-context input to block 2, so blocks 2..L carry the per-position patches of
    ``implicit_update_every_position``. Then, for every t,

        forward(params, config, tokens[:, -1:], patches=at_position(updates, t))
            = forward(params, config, tokens)[:, t]   (to rounding).

    At t = T − 1 the patch is the per-position one (and ``implicit_update``'s).

    ``per_block=True`` gives the statement Innocenti & Achour verify in their code
    (github.com/francesco-innocenti/generalising-icl, ``compute_icl_updates``), one
    block at a time: every block l uses u_x, h_x of block l run on the LAST position's
    with-context input z_l,T alone, so that

        block_forward(z_l[:, -1:], block l, patched with ΔW_l,t, Δb′_l,t) = block l's output at t,

    z_l being block l's input in the run of the whole prompt. In the first block the two
    choices agree; from the second block on the ``per_block`` patches are not for a
    chained ``forward`` (its block l sees z_l,t, not z_l,T).

    tokens (B, T, D). Returns one ``ImplicitUpdate`` per block with a position axis after
    the batch axis (delta_W (B, T, M, D)); in the first block ``u_without`` is u_x at
    every t. Raises DegeneratePositionError where u_x = 0 (position T − 1, block 0) or,
    in later blocks, where a position's u_∅ = 0.
    Reference: Innocenti & Achour (2025), arXiv:2512.11255.
    """
    check_params(params, config)
    check_tokens(tokens, config, params)
    per_block = check_bool("per_block", per_block)
    _, full = forward(params, config, tokens)
    updates = []
    for l, block_params in enumerate(params.blocks):
        z = full.inputs[l]  # (B, T, D)
        if l == 0 or per_block:
            u_x, h_x = _alone(z[:, -1:, :], block_params, config)  # (B, 1, D)
            zero = norms(u_x[:, 0, :]) == 0  # (B,)
            if bool(namespace(u_x).any(zero)):
                prompts = [b for b in range(zero.shape[0]) if bool(zero[b])]
                raise DegeneratePositionError(prompts, [z.shape[1] - 1] * len(prompts), l, "u_x")
        else:
            u_x, h_x = _alone(z, block_params, config)  # (B, T, D)
        updates.append(
            _update(block_params.mlp.W1, full.blocks[l].u, full.blocks[l].h, u_x, h_x, config, l)
        )
    return tuple(updates)


def at_position(updates: Sequence[ImplicitUpdate], t: int) -> tuple[ImplicitUpdate, ...]:
    """The per-block patches for position t: every array of every update indexed [:, t].

    ``updates``: what ``implicit_update_every_position`` or
    ``implicit_update_from_last_token`` returns (arrays (B, T, ...)); t an int with
    0 ≤ t < T. Returns a tuple of ``ImplicitUpdate`` (delta_W (B, M, D)), an entry per
    block for ``forward(..., patches=...)``.
    """
    t = check_position(t, check_position_updates(updates))
    return tuple(ImplicitUpdate(*(a[:, t, ...] for a in update)) for update in updates)


def position_alignment(updates: Sequence[ImplicitUpdate]) -> tuple[Array, ...]:
    """cos_F(ΔW_t, ΔW_t′) between every pair of positions t, t′, within each block.

    The patches are rank 1, ΔW_t = (W δu_t) a_tᵀ/‖a_t‖² (column W δu_t, row along a_t, the
    vector position t's patch divides by), so ⟨ΔW_t, ΔW_t′⟩_F = (W δu_t · W δu_t′)
    (a_t · a_t′)/(‖a_t‖² ‖a_t′‖²) and ‖ΔW_t‖_F = ‖W δu_t‖/‖a_t‖, hence

        cos_F(ΔW_t, ΔW_t′) = cos(W δu_t, W δu_t′) · cos(a_t, a_t′).

    ``updates`` with a position axis (arrays (B, T, ...)). Returns one (B, T, T) array
    per block; entries involving a zero ΔW (a position whose context does not move its
    MLP input, e.g. a causal model's first position) are NaN: a zero matrix has no
    direction.
    """
    check_position_updates(updates)
    out = []
    for update in updates:
        xp = namespace(update.column, update.row)
        c, r = update.column, update.row  # (B, T, M), (B, T, D)
        c_norm, r_norm = norms(c), norms(r)  # (B, T)
        safe_c = xp.where(c_norm == 0, xp.ones_like(c_norm), c_norm)
        c_hat = c / safe_c[..., None]
        r_hat = r / r_norm[..., None]
        cos = (c_hat @ c_hat.mT) * (r_hat @ r_hat.mT)
        zero = (c_norm == 0)[:, :, None] | (c_norm == 0)[:, None, :]  # (B, T, T)
        out.append(xp.where(zero, xp.full_like(cos, float("nan")), cos))
    return tuple(out)
