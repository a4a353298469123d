"""Adam for the training step: ``optim.adam_step`` with the parameter layout computed once.

``optim.adam_step`` walks the parameter trees several times per step, generically (check
that the gradients have the parameters' records, shapes and dtypes, flatten both, rebuild
the records around the new vector). For a
model of a thousand numbers that walk costs more than the arithmetic. ``adam_step_fast``
does the same arithmetic in the same order on the same flat vectors,

    m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,   t ← t + 1,
    θ ← θ − α m / (√v + ε̂),   α = lr √(1 − β₂ᵗ) / (1 − β₁ᵗ),   ε̂ = ε √(1 − β₂ᵗ)

(Kingma & Ba 2015, section 2), with the slices and shapes of the records looked up in a
layout computed once per tree structure. In the training loop, where it is given back
the parameters it returned, it walks only the gradients: the parameters are views of
the vector it keeps, and the new records come from a function of that vector built once
(:func:`_views`). Its results are bit for bit those of ``adam_step``
(tests/test_model_fast.py). It is what ``train.train_step`` runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .backend import namespace, reshape
from .optim import AdamState, _arrays  # the arrays of a tree, in optim.flatten's order
from .validation import (
    check_adam_state,
    check_fraction,
    check_learning_rate,
    check_positive_float,
    check_same_tree,
)

_LAYOUTS: dict = {}  # the leaves' shapes -> [(start, stop, shape)]


class _Returned(NamedTuple):
    """What :func:`adam_step_fast` returned last, and how: given those parameters back (the
    training loop's next step), it reads their vector instead of walking and
    concatenating them anew, that state (m and v of the layout's size by construction)
    needs no check, and the new parameters come from the same view function."""

    params: object  # the parameters returned, views of theta
    shapes: tuple  # their arrays' shapes in the layout's order (what the gradients must have)
    spans: list  # the layout: (start, stop, shape) per array
    theta: object  # (n_params,) the vector they are views of
    state: AdamState  # the state returned
    views: object  # the function of theta that made them (:func:`_views`)


_LAST = [None]  # the last call's _Returned


def _layout(arrays: list) -> tuple[tuple, list]:
    """(shapes, [(start, stop, shape)]) of ``arrays`` in one vector, the spans computed
    once per list of shapes."""
    shapes = tuple(tuple(a.shape) for a in arrays)
    spans = _LAYOUTS.get(shapes)
    if spans is None:
        spans, start = [], 0
        for shape in shapes:
            size = math.prod(shape)
            spans.append((start, start + size, shape))
            start += size
        _LAYOUTS[shapes] = spans
    return shapes, spans


def _views(like, spans):
    """A function of a flat vector θ returning a tree shaped like ``like`` whose arrays are
    views of θ, the next (start, stop, shape) of ``spans`` for each array of ``like`` in
    order: the walk over the tree is done once, when the layout is new, and each step
    runs only the slicing and the records' constructors."""
    if like is None:
        return lambda theta: None
    if isinstance(like, tuple):
        parts = [_views(part, spans) for part in like]
        if hasattr(like, "_fields"):  # a record (NamedTuple)
            make = type(like)
            return lambda theta: make(*[part(theta) for part in parts])
        return lambda theta: tuple([part(theta) for part in parts])
    start, stop, shape = next(spans)
    return lambda theta: reshape(theta[start:stop], shape)


def adam_step_fast(params, grads, state: AdamState, lr: float, beta1=0.9, beta2=0.999, eps=1e-8):
    """``optim.adam_step(params, grads, state, lr, beta1, beta2, eps)``, bit for bit.

    ``grads`` must have the records, shapes and dtype of ``params``
    (``model_fast.backward_fast`` returns them so): their shapes, in the layout's order,
    and the dtype of their concatenation are compared with the parameters' (a list
    comparison and an attribute, not a walk; a mismatch is named by
    ``validation.check_same_tree``). The scalars are checked as ``adam_step`` checks them,
    and the state (type, shapes, dtype, step) unless it and the parameters are those the
    last call returned (then they match by construction).
    Returns (params, state); the new parameters are views of one new vector, which the
    next call reads directly when it is given those parameters (no walk, no concatenation).
    """
    lr = check_learning_rate(lr)
    beta1 = check_fraction("beta1", beta1)
    beta2 = check_fraction("beta2", beta2)
    eps = check_positive_float("eps", eps)
    last = _LAST[0]
    if last is not None and params is last.params:  # params are views of last.theta
        shapes, spans, theta, views = last.shapes, last.spans, last.theta, last.views
        dtype = theta.dtype
    else:
        p_arrays = _arrays(params)
        shapes, spans = _layout(p_arrays)
        theta = None
        views = _views(params, iter(spans))
        dtype = p_arrays[0].dtype
    if theta is None or state is not last.state:
        check_adam_state(state, params, spans[-1][1], dtype)
    xp = namespace(state.m)
    if theta is None:
        theta = xp.concat(p_arrays, axis=None)  # (n_params,) the arrays flattened, in order
    g_arrays = _arrays(grads)
    if tuple(getattr(a, "shape", None) for a in g_arrays) != shapes:
        check_same_tree("grads", grads, "params", params)  # names the difference
    g = xp.concat(g_arrays, axis=None)  # (n_params,)
    if g.dtype != dtype:
        check_same_tree("grads", grads, "params", params)  # names the dtype
    t = state.step + 1
    root = math.sqrt(1.0 - beta2**t)
    alpha = lr * root / (1.0 - beta1**t)
    eps_hat = eps * root
    m = beta1 * state.m + (1.0 - beta1) * g
    v = beta2 * state.v + (1.0 - beta2) * (g * g)
    theta = theta - alpha * m / (xp.sqrt(v) + eps_hat)
    new_params = views(theta)
    new_state = AdamState(m=m, v=v, step=t)
    _LAST[0] = _Returned(new_params, shapes, spans, theta, new_state, views)
    return new_params, new_state
