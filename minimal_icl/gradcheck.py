"""A gradient checker: central finite differences against a handwritten backward.

The check follows CS231n's ``gradient_check.py`` and its notebooks in taking a random
upstream gradient (an all-ones upstream gradient is blind to errors that sum to zero,
such as a wrong softmax Jacobian) and in working in float64. Two choices are the
package's own: fourth-order central differences (CS231n's are second-order,
(f(x + h) − f(x − h))/2h), and one error per parameter array,
‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖), where CS231n's notebooks report the
largest element-wise one, max |a − n| / max(1e-8, |a| + |n|) (their ``rel_error``).

    error = check_gradients(loss_fn, tree, grads)     # {name: relative error}
    assert_gradients_ok(error)                         # raises if any > GRADCHECK_RTOL
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy

from .backend import Array, namespace, tree_leaves, tree_map
from .tolerances import GRADCHECK_RTOL
from .validation import (
    check_float_array,
    check_generator,
    check_non_negative,
    check_positive_float,
    check_same_shape,
)

FD_STEP = 1e-5  # fourth-order central differences: truncation ~h⁴, rounding ~1e-16/h


def relative_error(analytic: Array, numeric: Array) -> float:
    """‖a − n‖ / max(‖a‖, ‖n‖) over all entries (0.0 when both are exactly zero)."""
    check_same_shape("analytic", analytic, "numeric", numeric)
    for name, a in (("analytic", analytic), ("numeric", numeric)):
        # float() of a complex norm would drop its imaginary part
        if getattr(a.dtype, "kind", "f") == "c":
            raise TypeError(f"relative_error: {name} is complex ({a.dtype}); gradients are real")
    xp = namespace(analytic, numeric)
    diff = float(xp.sqrt(xp.sum((analytic - numeric) ** 2)))
    scale = max(float(xp.sqrt(xp.sum(analytic**2))), float(xp.sqrt(xp.sum(numeric**2))))
    return 0.0 if scale == 0.0 else diff / scale


def numerical_gradient(f, x: Array, step: float = FD_STEP) -> Array:
    """∂f/∂x by fourth-order central differences, for each entry i:

        [8 (f(x + h eᵢ) − f(x − h eᵢ)) − (f(x + 2h eᵢ) − f(x − 2h eᵢ))] / 12h.

    The error is O(h⁴) instead of O(h²), so a small h keeps both truncation and
    rounding far below GRADCHECK_RTOL, and a ReLU kink is rarely within 2h.

    ``f`` maps an array shaped like x to a Python float. Works on any array-API array
    (the perturbation is built in x's own namespace and device). x is real floating point
    (an integer x would round every perturbation to 0), the step h finite and > 0.
    """
    if not callable(f):
        raise TypeError(f"numerical_gradient: f must be a function, got {type(f).__name__}")
    check_float_array("x", x)
    step = check_positive_float("step", step)
    xp = namespace(x)
    n = math.prod(x.shape)
    flat = xp.reshape(x, (n,))
    grad = numpy.empty(n)
    basis = numpy.zeros(n)
    for i in range(n):
        basis[i] = step
        e = xp.asarray(basis, dtype=x.dtype, device=x.device)

        def at(shift):
            return f(xp.reshape(flat + shift * e, x.shape))

        grad[i] = (8.0 * (at(1.0) - at(-1.0)) - (at(2.0) - at(-2.0))) / (12.0 * step)
        basis[i] = 0.0
    return xp.reshape(xp.asarray(grad, dtype=x.dtype, device=x.device), x.shape)


def check_gradients(loss_fn, tree, grads, step: float = FD_STEP) -> dict[str, float]:
    """Relative error of every array of ``grads`` against finite differences.

    ``loss_fn(tree) -> float`` is the scalar whose gradient ``grads`` claims to be;
    ``tree`` is any array, record or tuple of them, and ``grads`` has the same structure.
    Returns ``{dotted name: relative error}`` (the name ``"input"`` for a bare array; the
    positions ``"0"``, ``"1"``, ... for a plain tuple).
    """
    names = [name for name, _ in tree_leaves(tree)]
    errors = {}
    for index, (name, leaf) in enumerate(tree_leaves(tree)):
        analytic = dict(tree_leaves(grads)).get(name)
        if analytic is None:
            raise ValueError(f"check_gradients: no gradient for {name or 'input'!r}")
        if getattr(analytic, "shape", None) != getattr(leaf, "shape", None):
            raise ValueError(
                f"check_gradients: the gradient for {name or 'input'!r} has shape"
                f" {getattr(analytic, 'shape', type(analytic).__name__)}, its array"
                f" {getattr(leaf, 'shape', None)}"
            )

        def f(value, index=index):
            counter = iter(range(len(names)))
            replaced = tree_map(lambda a: value if next(counter) == index else a, tree)
            return float(loss_fn(replaced))

        errors[name or "input"] = relative_error(analytic, numerical_gradient(f, leaf, step))
    return errors


def assert_gradients_ok(errors: dict[str, float], rtol: float = GRADCHECK_RTOL) -> None:
    """Raise AssertionError listing every gradient whose relative error exceeds ``rtol``
    (a finite number ≥ 0)."""
    rtol = check_non_negative("rtol", rtol)
    if not isinstance(errors, Mapping):
        raise TypeError(f"errors must be the dict of check_gradients or check_layer, got"
                        f" {type(errors).__name__}")
    bad = {name: err for name, err in errors.items() if not err <= rtol}
    if bad:
        lines = ", ".join(f"{name}: {err:.2e}" for name, err in sorted(bad.items()))
        raise AssertionError(f"gradient check failed (rtol {rtol:.0e}): {lines}")


def random_like(x: Array, rng: numpy.random.Generator) -> Array:
    """Standard normal numbers shaped like x, drawn on the host, in x's namespace. ``rng``
    a numpy Generator (or an int ≥ 0 seeding one)."""
    rng = check_generator(rng, "rng")
    xp = namespace(x)
    return xp.asarray(rng.standard_normal(tuple(x.shape)), dtype=x.dtype, device=x.device)


def check_layer(forward_fn, backward_fn, inputs, seed: int = 0, step: float = FD_STEP) -> dict[str, float]:
    """Gradient-check a forward/backward pair with a random upstream gradient G.

    ``forward_fn(inputs) -> (out, cache)`` and ``backward_fn(dout, cache) -> grads``
    with ``grads`` structured like ``inputs``. The loss checked is Σ out ⊙ G.
    """
    out, cache = forward_fn(inputs)
    G = random_like(out, numpy.random.default_rng(seed))
    xp = namespace(out)
    grads = backward_fn(G, cache)

    def loss(tree):
        return float(xp.sum(forward_fn(tree)[0] * G))

    return check_gradients(loss, inputs, grads, step)
