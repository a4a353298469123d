"""The dense layer y = x Wᵀ + b, with a weight shared by all prompts or one per prompt.

A per-prompt weight (B, out, in) is how a patched model runs: each prompt carries its
own W + ΔW (Theorem 2.2 in v1 of Dherin et al. 2025, arXiv:2507.16003).
"""

from __future__ import annotations

from typing import NamedTuple

from .backend import Array, namespace


class LinearCache(NamedTuple):
    x: Array  # (B, T, in)
    W: Array  # (out, in), or (B, out, in) for a per-prompt weight
    bias_ndim: int  # 0 without a bias, 1 for (out,), 2 for a per-prompt (B, out)


def linear_forward(x: Array, W: Array, b: Array | None = None) -> tuple[Array, LinearCache]:
    """y = x Wᵀ + b: each row x_t of x (a token) gives the row y_t = W x_t + b.

    Shapes: x (B, T, in); W (out, in) or (B, out, in); b None, (out,) or (B, out).
    Returns y (B, T, out).
    """
    xp = namespace(x, W, b)
    if W.ndim == 2:
        # one GEMM over all prompts and positions: NumPy's batched matmul pays per prompt,
        # 1–3× slower at the paper's sizes (B = 64, T = 51, D = 3, M = 128)
        B, T, n_in = x.shape
        rows = xp.reshape(x, (B * T, n_in)) @ W.mT  # (B·T, out)
        y = xp.reshape(rows, (B, T, W.shape[0]))
    else:
        y = x @ W.mT  # (B, T, out)
    bias_ndim = 0
    if b is not None:
        bias_ndim = b.ndim
        y = y + (b if b.ndim == 1 else xp.expand_dims(b, axis=1))
    return y, LinearCache(x=x, W=W, bias_ndim=bias_ndim)


def linear_backward(dy: Array, cache: LinearCache) -> tuple[Array, Array, Array | None]:
    """Gradients of y = x Wᵀ + b: returns (dx, dW, db), dW and db shaped like W and b.

    From y_t = W x_t + b for every row t (every prompt and position):

        dx_t = Wᵀ dy_t, i.e. dx = dy W                         (B, T, in)
        dW = Σ_t dy_t x_tᵀ, i.e. dyᵀ x summed over the rows     (out, in)
        db = Σ_t dy_t                                          (out,)

    For a per-prompt W (B, out, in) or b (B, out) the sums run over the T positions of
    each prompt only: dW (B, out, in), db (B, out). db is None without a bias.
    """
    x, W, bias_ndim = cache
    xp = namespace(dy, x, W)
    n_out, n_in = W.shape[-2], W.shape[-1]

    # forward was: y = x Wᵀ + b, so dx = dy W and dW = dyᵀ x (summed over the rows)
    if W.ndim == 2:
        # a shared W: every prompt and position at once, one GEMM each for dx and dW
        dy_rows = xp.reshape(dy, (-1, n_out))  # (B·T, out)
        dx = xp.reshape(dy_rows @ W, x.shape)  # (B, T, in)
        dW = dy_rows.mT @ xp.reshape(x, (-1, n_in))  # (out, in)
    else:
        dx = dy @ W  # (B, T, in)
        dW = dy.mT @ x  # (B, out, in)

    # forward was: y = ... + b, b added to every row, so db = Σ_t dy_t
    if bias_ndim == 0:
        db = None
    elif bias_ndim == 1:
        db = xp.sum(xp.reshape(dy, (-1, n_out)), axis=0)  # (out,)
    else:
        db = xp.sum(dy, axis=1)  # (B, out)
    return dx, dW, db
