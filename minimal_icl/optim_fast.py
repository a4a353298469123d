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

from .backend import namespace, reshape
from .optim import AdamState, _arrays  # the arrays of a tree, in optim.flatten's order
from .validation import check_adam_state, check_fraction, check_learning_rate, check_positive_float

_LAYOUTS: dict = {}  # the leaves' shapes -> [(start, stop, shape)]
# The parameters adam_step_fast returned last, their layout, the vector they are views of
# and the state it returned: given those parameters back (the training loop's next step),
# it reads that vector instead of walking and concatenating them anew, and that state
# (m and v of the layout's size by construction) needs no check.
_LAST: list = [None, None, None, None]


def _layout(arrays: list) -> list:
    """[(start, stop, shape)] of ``arrays`` in one vector, computed once per list of shapes."""
    key = tuple(tuple(a.shape) for a in arrays)
    spans = _LAYOUTS.get(key)
    if spans is None:
        spans, start = [], 0
        for shape in key:
            size = math.prod(shape)
            spans.append((start, start + size, shape))
            start += size
        _LAYOUTS[key] = spans
    return spans


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
    Returns (params, state); the new parameters are views of one new vector, which the
    next call reads directly when it is given those parameters (no walk, no concatenation).
    """
    lr = check_learning_rate(lr)
    beta1 = check_fraction("beta1", beta1)
    beta2 = check_fraction("beta2", beta2)
    eps = check_positive_float("eps", eps)
    if params is _LAST[0]:
        spans, theta = _LAST[1], _LAST[2]  # params are views of theta: its values
    else:
        p_arrays = _arrays(params)
        spans = _layout(p_arrays)
        theta = None
    if state is not _LAST[3] or theta is None:
        check_adam_state(state, params, spans[-1][1])
    xp = namespace(state.m)
    if theta is None:
        theta = xp.concat(p_arrays, axis=None)  # (P,) the arrays flattened, in order
    g = xp.concat(_arrays(grads), axis=None)  # (P,)
    t = state.step + 1
    root = math.sqrt(1.0 - beta2**t)
    alpha = lr * root / (1.0 - beta1**t)
    eps_hat = eps * root
    m = beta1 * state.m + (1.0 - beta1) * g
    v = beta2 * state.v + (1.0 - beta2) * (g * g)
    theta = theta - alpha * m / (xp.sqrt(v) + eps_hat)
    pieces = iter([reshape(theta[start:stop], shape) for start, stop, shape in spans])
    new_params = _rebuild(params, pieces)
    new_state = AdamState(m=m, v=v, step=t)
    _LAST[:] = [new_params, spans, theta, new_state]
    return new_params, new_state
