"""Named tolerances, one per kind of claim, shared by the tests and the tutorials.

* ``IDENTITY_RTOL``: an exact algebraic identity (Theorem 2.2, Proposition 3.1, the
  von Oswald construction) computed in float64. The residual is measured relative to
  the size of the terms being compared (see :func:`relative_residual`).
* ``GRADCHECK_RTOL``: a handwritten gradient against central finite differences, with
  a random upstream gradient, in float64.
* ``FLOAT32_RTOL``: the same identities in float32 (GPU speed mode). Measured residuals
  are about 1e-7 (median) to 2e-5 (worst) over 6000 random models (docs/float32.md).
  With an earlier version of the package one ill-conditioned 3-block linear stack outside
  the float32 test's draw reached 1.03e-4 (the current code: 1.9e-7 on it), so the tier
  is a measured bound for well-conditioned models, not a guarantee for every model.
"""

from __future__ import annotations

import math

import numpy

IDENTITY_RTOL = 1e-12
GRADCHECK_RTOL = 1e-6
FLOAT32_RTOL = 1e-4


def relative_residual(a, b) -> float:
    """max |a − b| / max(max |a|, max |b|): the residual measured against the terms.

    Returns 0.0 when both are exactly zero (NaN if either holds NaN: then no tolerance is
    met). Works for any array-API arrays of one shape (or shapes that broadcast).
    """
    from .backend import namespace
    from .validation import check_same_shape  # imported here: tolerances is a leaf module

    check_same_shape("a", a, "b", b)

    xp = namespace(a, b)
    scale = float(xp.max(xp.maximum(xp.abs(a), xp.abs(b))))
    with numpy.errstate(over="ignore"):  # a − b beyond the largest float: measured below
        diff = float(xp.max(xp.abs(a - b)))
    if scale == 0.0:
        return diff
    if math.isinf(diff) and math.isfinite(scale):  # a, b near the largest float
        return float(xp.max(xp.abs(a / scale - b / scale)))
    return diff / scale
