"""Optimisers as pure functions over parameter trees: SGD (with momentum) and Adam.

A step takes parameters, gradients (a tree of the same record types) and the optimiser
state, and returns new parameters and a new state; nothing is modified in place.

    state = adam_init(params)
    params, state = adam_step(params, grads, state, lr=1e-3)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

from .backend import namespace, tree_map
from .validation import (
    check_adam_state,
    check_flat_vector,
    check_float_tree,
    check_fraction,
    check_learning_rate,
    check_positive_float,
    check_same_tree,
    check_sgd_state,
)


# -- SGD -------------------------------------------------------------------------------


class SGDState(NamedTuple):
    velocity: Any  # a tree like params (zeros at the start), or None without momentum


def sgd_init(params, momentum: float = 0.0) -> SGDState:
    """The state of SGD: a zero velocity per parameter when ``momentum`` > 0."""
    momentum = check_fraction("momentum", momentum)
    check_float_tree("params", params)
    if momentum == 0.0:
        return SGDState(velocity=None)
    return SGDState(velocity=tree_map(lambda p: namespace(p).zeros_like(p), params))


def sgd_step(params, grads, state: SGDState, lr: float, momentum: float = 0.0):
    """One SGD step, with heavy-ball momentum μ in PyTorch's convention:

        v ← μ v + g,    θ ← θ − lr v          (μ = 0: θ ← θ − lr g)

    ``state``: the SGDState of ``sgd_init(params, momentum)`` or of the previous step
    (None also stands for the empty state of μ = 0). Returns (params, state). Raises
    ValueError for lr not finite ≥ 0, μ outside [0, 1), grads (or a velocity) without the
    records and shapes of params, a state whose velocity does not fit μ (none for μ > 0,
    one for μ = 0); TypeError for a state that is not an SGDState and for arrays that are
    not real floating point (``minimal_icl.validation``).
    """
    lr = check_learning_rate(lr)
    momentum = check_fraction("momentum", momentum)
    check_same_tree("grads", grads, "params", params)
    check_sgd_state(state, params, momentum)
    if momentum == 0.0:
        return tree_map(lambda p, g: p - lr * g, params, grads), state
    velocity = tree_map(lambda v, g: momentum * v + g, state.velocity, grads)
    return tree_map(lambda p, v: p - lr * v, params, velocity), SGDState(velocity)


# -- parameters as one vector ------------------------------------------------------------


def _arrays(tree, out: list | None = None) -> list:
    """The arrays of a tree, in the order of ``tree_leaves`` (a plain loop: this is on
    the hot path, where ``tree_map``'s generality costs more than the arithmetic)."""
    out = [] if out is None else out
    if isinstance(tree, tuple):
        for part in tree:
            _arrays(part, out)
    elif tree is not None:
        out.append(tree)
    return out


def _rebuild(like, arrays: Iterator):
    """A tree shaped like ``like`` holding the next arrays of ``arrays``."""
    if like is None:
        return None
    if isinstance(like, tuple):
        parts = [_rebuild(part, arrays) for part in like]
        return type(like)(*parts) if hasattr(like, "_fields") else tuple(parts)
    return next(arrays)


def flatten(tree):
    """Every array of ``tree`` reshaped to a row and concatenated: one vector (n_params,),
    n_params the number of entries of all arrays."""
    arrays = _arrays(tree)
    xp = namespace(*arrays)
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays])


def unflatten(vector, like):
    """The inverse of :func:`flatten`: a tree shaped like ``like`` whose arrays are
    consecutive pieces of ``vector`` (views where the backend allows it)."""
    shapes = [a.shape for a in _arrays(like)]
    sizes = [math.prod(shape) for shape in shapes]
    check_flat_vector(vector, sum(sizes))
    xp = namespace(vector)
    pieces, offset = [], 0
    for shape, size in zip(shapes, sizes):
        pieces.append(xp.reshape(vector[offset : offset + size], shape))
        offset += size
    return _rebuild(like, iter(pieces))


# -- Adam ------------------------------------------------------------------------------


class AdamState(NamedTuple):
    """Adam's moments for all parameters at once, as vectors in :func:`flatten` order."""

    m: Any  # (n_params,) first-moment estimate
    v: Any  # (n_params,) second-moment estimate
    step: int  # steps taken so far, t


def adam_init(params) -> AdamState:
    """Adam's state at t = 0: zero moments."""
    check_float_tree("params", params)
    zeros = namespace(*_arrays(params)).zeros_like(flatten(params))
    return AdamState(m=zeros, v=zeros, step=0)


def adam_step(
    params,
    grads,
    state: AdamState,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
):
    """One Adam step (Kingma & Ba 2015, Algorithm 1):

        m ← β₁ m + (1 − β₁) g,      v ← β₂ v + (1 − β₂) g²,      t ← t + 1
        θ ← θ − lr m̂ / (√v̂ + ε),    m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)

    computed in the form of Kingma & Ba's section 2, with the bias corrections folded
    into two scalars (the same number up to rounding, fewer array operations):

        θ ← θ − α m / (√v + ε̂),    α = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ),  ε̂ = ε √(1 − β₂ᵗ)

    (Kingma & Ba name ε̂ without a value; ε̂ = ε √(1 − β₂ᵗ) makes the two forms equal).

    All parameters are updated as one vector (see :func:`flatten`): a dozen operations
    per step instead of a dozen per parameter array, which matters for small models
    where each array operation costs more in overhead than in arithmetic.
    Returns (params, state); the new parameters are views of one new vector.
    Raises ValueError for lr not finite ≥ 0, β₁ or β₂ outside [0, 1), ε not finite > 0
    (ε = 0 divides 0 by 0 wherever the gradient has been 0 at every step so far), grads
    without the records and shapes of params, or a state of other parameters; TypeError
    for a state that is not an AdamState and for arrays that are not real floating point
    (``minimal_icl.validation``).
    """
    lr = check_learning_rate(lr)
    beta1 = check_fraction("beta1", beta1)
    beta2 = check_fraction("beta2", beta2)
    eps = check_positive_float("eps", eps)
    check_same_tree("grads", grads, "params", params)
    g = flatten(grads)  # (n_params,)
    check_adam_state(state, params, g.shape[0], g.dtype)
    t = state.step + 1
    root = math.sqrt(1.0 - beta2**t)
    alpha = lr * root / (1.0 - beta1**t)
    eps_hat = eps * root

    xp = namespace(g)
    m = beta1 * state.m + (1.0 - beta1) * g
    v = beta2 * state.v + (1.0 - beta2) * (g * g)
    theta = flatten(params) - alpha * m / (xp.sqrt(v) + eps_hat)
    return unflatten(theta, params), AdamState(m=m, v=v, step=t)
