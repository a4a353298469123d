"""LayerNorm over the token width, a forward/backward pair.

    LN(x) = γ ⊙ (x − μ) / √(σ² + eps) + β,
    μ = mean(x), σ² = mean((x − μ)²)  (the biased variance), over the last axis;
    γ, β are the LayerNorm's gain and bias (``LayerNormParams.gain``, ``.bias``).
"""

from __future__ import annotations

from typing import NamedTuple

from .backend import Array, namespace
from .params import LayerNormParams


class LayerNormCache(NamedTuple):
    x_hat: Array  # (B, T, D) the normalised input (x − μ) / √(σ² + eps)
    rstd: Array  # (B, T, 1) 1 / √(σ² + eps)
    gain: Array  # (D,)


def layernorm_forward(x: Array, p: LayerNormParams, eps: float) -> tuple[Array, LayerNormCache]:
    """LN(x) for x (B, T, D); returns (y, LayerNormCache), y (B, T, D)."""
    xp = namespace(x, p.gain)
    mu = xp.mean(x, axis=-1, keepdims=True)  # (B, T, 1)
    xc = x - mu
    var = xp.mean(xc * xc, axis=-1, keepdims=True)  # (B, T, 1) biased variance
    rstd = 1.0 / xp.sqrt(var + eps)  # eps inside the square root
    x_hat = xc * rstd
    return x_hat * p.gain + p.bias, LayerNormCache(x_hat=x_hat, rstd=rstd, gain=p.gain)


def layernorm_backward(dy: Array, cache: LayerNormCache) -> tuple[Array, LayerNormParams]:
    """Returns (dx, LayerNormParams(gain=dgain, bias=dbias)): dx (B, T, D), dgain and
    dbias (D,).

    With x̂ = (x − μ) r, r = 1/√(σ² + eps), and dx̂ = dy ⊙ γ, over the last axis:

        dγ = Σ_rows dy ⊙ x̂,   dβ = Σ_rows dy,
        dx = r (dx̂ − mean(dx̂) − x̂ mean(dx̂ ⊙ x̂)).

    The last line sums three paths: x directly (r dx̂), through μ (∂μ/∂x_j = 1/D gives
    −r mean(dx̂)) and through σ² (∂r/∂x_j = −r³ (x_j − μ)/D gives −r x̂ mean(dx̂ ⊙ x̂));
    it is exact for any eps, which x̂ and r already contain.
    """
    x_hat, rstd, gain = cache
    xp = namespace(dy, x_hat)
    D = x_hat.shape[-1]

    # forward was: y = x_hat * gain + bias
    dgain = xp.sum(xp.reshape(dy * x_hat, (-1, D)), axis=0)
    dbias = xp.sum(xp.reshape(dy, (-1, D)), axis=0)
    dx_hat = dy * gain
    # forward was: x_hat = (x − μ) · rstd with μ and rstd functions of x; the three
    # paths (direct, through μ, through σ²) combine into the usual projection:
    dx = rstd * (
        dx_hat
        - xp.mean(dx_hat, axis=-1, keepdims=True)
        - x_hat * xp.mean(dx_hat * x_hat, axis=-1, keepdims=True)
    )
    return dx, LayerNormParams(gain=dgain, bias=dbias)
