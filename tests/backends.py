"""Which array backends the test suite can run on here."""

from __future__ import annotations

import numpy


def gpu_available() -> bool:
    """True where CuPy is installed and finds a GPU."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # noqa: BLE001 - no CuPy, or no GPU: the CuPy cases are skipped
        return False


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
