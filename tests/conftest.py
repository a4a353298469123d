"""Shared test fixtures: array backends and hypothesis profiles.

Hypothesis profiles (select with HYPOTHESIS_PROFILE=name):
    ci        derandomised, 200 examples per property, no deadline (the default)
    thorough  10,000 examples per property (``make thorough``)
    dev       50 examples, for quick local iteration
"""

from __future__ import annotations

import os

import numpy
import pytest
from backends import Backend, gpu_available
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _backends():
    out = [pytest.param(("numpy",), id="numpy")]
    out.append(pytest.param(("array_api_strict", "device1"), id="strict-device1"))
    if gpu_available():
        out.append(pytest.param(("cupy",), id="cupy"))
    return out


@pytest.fixture(params=_backends())
def backend(request):
    """NumPy, array_api_strict on its second simulated device, and CuPy where a GPU exists."""
    name = request.param[0]
    if name == "numpy":
        return Backend("numpy", numpy)
    if name == "array_api_strict":
        import array_api_strict

        return Backend("array_api_strict:device1", array_api_strict, array_api_strict.Device("device1"))
    import array_api_compat.cupy as cp

    return Backend("cupy", cp)
