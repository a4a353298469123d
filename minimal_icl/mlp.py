"""The MLP u ↦ W2 g(W1 u + b1) + b2, a forward/backward pair.

W1 is the W of Theorem 2.2 in v1 of Dherin et al. (2025): the first dense layer after
attention. A patched model passes per-prompt weights, W1 of shape (B, M, D) and b2 of
shape (B, D), and gets their gradients per prompt, in the same shapes.
"""

from __future__ import annotations

from typing import NamedTuple

from .activations import ActivationCache, activation_backward, activation_forward
from .backend import Array
from .linear import LinearCache, linear_backward, linear_forward
from .params import MLPParams


class MLPCache(NamedTuple):
    fc1: LinearCache  # input u (B, T, D)
    act: ActivationCache  # input: the pre-activation W1 u + b1 (B, T, M)
    fc2: LinearCache  # input g(W1 u + b1) (B, T, M)


def mlp_forward(u: Array, p: MLPParams, activation: str) -> tuple[Array, MLPCache]:
    """W2 g(W1 u + b1) + b2 for u (B, T, D); returns (B, T, D)."""
    pre, fc1 = linear_forward(u, p.W1, p.b1)  # (B, T, M)
    hidden, act = activation_forward(pre, activation)  # (B, T, M)
    out, fc2 = linear_forward(hidden, p.W2, p.b2)  # (B, T, D)
    return out, MLPCache(fc1, act, fc2)


def mlp_backward(dout: Array, cache: MLPCache) -> tuple[Array, MLPParams]:
    """Returns (du, MLPParams of gradients), du (B, T, D), each gradient shaped like its
    parameter. Three steps, each a ``linear_backward`` or ``activation_backward``:

        dhidden = dout W2,   dpre = dhidden ⊙ g′(pre),   du = dpre W1
    """
    # forward was: out = hidden W2ᵀ + b2
    dhidden, dW2, db2 = linear_backward(dout, cache.fc2)
    # forward was: hidden = g(pre)
    dpre = activation_backward(dhidden, cache.act)
    # forward was: pre = u W1ᵀ + b1
    du, dW1, db1 = linear_backward(dpre, cache.fc1)
    return du, MLPParams(W1=dW1, b1=db1, W2=dW2, b2=db2)
