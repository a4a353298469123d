"""Which array backends the test suite can run on here."""

from __future__ import annotations


def gpu_available() -> bool:
    """True where CuPy is installed and finds a GPU."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # noqa: BLE001 - no CuPy, or no GPU: the CuPy cases are skipped
        return False
