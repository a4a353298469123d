"""Elementwise activations: ReLU and the exact GELU, each a forward/backward pair."""

from __future__ import annotations

import math
from typing import NamedTuple

from .backend import Array, erf, namespace

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class ActivationCache(NamedTuple):
    x: Array  # the input, any shape
    kind: str  # "relu" or "gelu"


def relu_forward(x: Array) -> tuple[Array, ActivationCache]:
    """relu(x) = max(x, 0)."""
    xp = namespace(x)
    return xp.maximum(x, xp.zeros_like(x)), ActivationCache(x, "relu")


def relu_backward(dy: Array, cache: ActivationCache) -> Array:
    """dy ⊙ relu′(x): relu′(x) = 1 for x > 0 and 0 for x ≤ 0 (the subgradient 0 at the
    kink)."""
    xp = namespace(dy, cache.x)
    # forward was: y = max(x, 0), so dx = dy where x > 0, else 0
    return xp.where(cache.x > 0, dy, xp.zeros_like(dy))


def gelu_forward(x: Array) -> tuple[Array, ActivationCache]:
    """gelu(x) = x Φ(x), Φ(x) = (1 + erf(x/√2))/2: the exact form, not the tanh fit."""
    phi_cdf = 0.5 * (1.0 + erf(x * _INV_SQRT2))
    return x * phi_cdf, ActivationCache(x, "gelu")


def gelu_backward(dy: Array, cache: ActivationCache) -> Array:
    """dy ⊙ gelu′(x): gelu′(x) = Φ(x) + x φ(x) (the product rule, Φ′ = φ), with the normal
    density φ(x) = e^{−x²/2}/√(2π)."""
    xp = namespace(dy, cache.x)
    x = cache.x
    # forward was: y = x Φ(x), so dx = dy (Φ(x) + x φ(x))
    phi_cdf = 0.5 * (1.0 + erf(x * _INV_SQRT2))
    phi_pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (phi_cdf + x * phi_pdf)


def activation_forward(x: Array, kind: str) -> tuple[Array, ActivationCache]:
    """g(x) for kind "relu" or "gelu"; returns (g(x), ActivationCache), g(x) shaped like x.
    Raises ValueError for any other kind."""
    if kind == "relu":
        return relu_forward(x)
    if kind == "gelu":
        return gelu_forward(x)
    raise ValueError(f"activation_forward: kind must be 'relu' or 'gelu', got {kind!r}")


def activation_backward(dy: Array, cache: ActivationCache) -> Array:
    """dy ⊙ g′(x) for the x and kind the forward cached; shaped like dy."""
    return relu_backward(dy, cache) if cache.kind == "relu" else gelu_backward(dy, cache)
