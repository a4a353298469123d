"""Adam for the training step: ``optim.adam_step`` with the parameter layout computed once.

``optim.adam_step`` walks the parameter tree three times per step (flatten the gradients,
flatten the parameters, rebuild the records around the new vector), generically. For a
model of a thousand numbers that walk costs more than the arithmetic. ``adam_step_fast``
does the same arithmetic in the same order on the same flat vectors,

    m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,   t ← t + 1,
    θ ← θ − α m / (√v + ε̂),   α = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ),   ε̂ = ε √(1 − β₂ᵗ)

(Kingma & Ba 2015, section 2), with the slices and shapes of the records looked up in a
layout computed once per tree structure. Its results are bit for bit those of
``adam_step`` (tests/test_model_fast.py). It is what ``train.train_step`` runs.
"""

from __future__ import annotations

import math

from .backend import namespace
from .optim import AdamState
from .validation import check_adam_state, check_fraction, check_learning_rate, check_positive_float

_LAYOUTS: dict = {}  # tree structure -> (the structure's builder, [(start, stop, shape)])


def _structure(tree):
    """A hashable description of a parameter tree: record types and array shapes."""
    if tree is None:
        return None
    if isinstance(tree, tuple):
        return (type(tree), tuple(_structure(part) for part in tree))
    return tuple(tree.shape)


def _leaves(tree, out: list) -> list:
    if isinstance(tree, tuple):
        for part in tree:
            _leaves(part, out)
    elif tree is not None:
        out.append(tree)
    return out


def _layout(params):
    """(key, [(start, stop, shape)]) of the arrays of ``params`` in ``flatten`` order."""
    key = _structure(params)
    layout = _LAYOUTS.get(key)
    if layout is None:
        spans, start = [], 0
        for a in _leaves(params, []):
            size = math.prod(a.shape)
            spans.append((start, start + size, tuple(a.shape)))
            start += size
        layout = _LAYOUTS[key] = spans
    return layout


def _rebuild(like, pieces):
    if like is None:
        return None
    if isinstance(like, tuple):
        parts = [_rebuild(part, pieces) for part in like]
        return type(like)(*parts) if hasattr(like, "_fields") else tuple(parts)
    return next(pieces)


def adam_step_fast(params, grads, state: AdamState, lr: float, beta1=0.9, beta2=0.999, eps=1e-8):
    """``optim.adam_step(params, grads, state, lr, beta1, beta2, eps)``, bit for bit.

    ``grads`` must have the records and shapes of ``params`` (``model_fast.backward_fast``
    returns them so); the scalars and the state are checked as ``adam_step`` checks them.
    Returns (params, state); the new parameters are views of one new vector.
    """
    lr = check_learning_rate(lr)
    beta1 = check_fraction("beta1", beta1)
    beta2 = check_fraction("beta2", beta2)
    eps = check_positive_float("eps", eps)
    spans = _layout(params)
    P = spans[-1][1]
    check_adam_state(state, params, P)
    g_arrays = _leaves(grads, [])
    p_arrays = _leaves(params, [])
    xp = namespace(state.m)
    g = xp.concat([xp.reshape(a, (-1,)) for a in g_arrays])  # (P,)
    theta = xp.concat([xp.reshape(a, (-1,)) for a in p_arrays])  # (P,)
    t = state.step + 1
    root = math.sqrt(1.0 - beta2**t)
    alpha = lr * root / (1.0 - beta1**t)
    eps_hat = eps * root
    m = beta1 * state.m + (1.0 - beta1) * g
    v = beta2 * state.v + (1.0 - beta2) * (g * g)
    theta = theta - alpha * m / (xp.sqrt(v) + eps_hat)
    pieces = iter([xp.reshape(theta[start:stop], shape) for start, stop, shape in spans])
    return _rebuild(params, pieces), AdamState(m=m, v=v, step=t)
