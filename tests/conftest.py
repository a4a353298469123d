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
from backends import gpu_available
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


class Backend:
    """An array namespace and a device to create arrays on, with a way back to NumPy."""

    def __init__(self, name, xp, device=None):
        self.name, self.xp, self.device = name, xp, device

    def asarray(self, a, dtype=None):
        from minimal_icl.backend import resolve_dtype

        return self.xp.asarray(numpy.asarray(a), dtype=resolve_dtype(self.xp, dtype), device=self.device)

    def to_numpy(self, a):
        if self.name == "cupy":
            return a.get()
        if self.name.startswith("array_api_strict"):
            import array_api_strict

            return numpy.asarray(self.xp.asarray(a, device=array_api_strict.Device("CPU_DEVICE")))
        return numpy.asarray(a)

    def __repr__(self):
        return f"Backend({self.name})"


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
