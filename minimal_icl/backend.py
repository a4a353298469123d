"""The array backend: which namespace an array belongs to, and moving trees between them.

Every numeric function in minimal_icl (but ``linattn``, NumPy only) asks its inputs for
their namespace with :func:`namespace` and then uses only functions of the Python array
API standard (``xp.matmul``, ``xp.sum``, ``xp.permute_dims``, ...). The same code therefore runs on
NumPy, on CuPy (a GPU) and on ``array_api_strict`` (the reference implementation the
tests use to prove that nothing outside the standard is called).

Random numbers are always drawn on the host with ``numpy.random.default_rng`` and then
moved with ``xp.asarray``: the same seed gives the same numbers on every backend.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any, Callable

import array_api_compat
import numpy

Array = Any  # an array of any array-API namespace


def namespace(*arrays: Array):
    """The array-API namespace shared by ``arrays`` (``None`` entries are ignored).

    NumPy ≥ 2 implements the standard in its main namespace, so NumPy arrays get
    ``numpy`` itself (no wrapper layer on the hot path); everything else goes through
    ``array_api_compat.array_namespace``.
    """
    for a in arrays:  # a plain loop: this runs a few dozen times per training step
        if a is not None and type(a) is not numpy.ndarray:
            break
    else:
        return numpy
    return array_api_compat.array_namespace(*(a for a in arrays if a is not None))


class BackendUnavailableError(ValueError, ImportError):
    """An array library was asked for that cannot run here (CuPy missing, or no usable GPU).

    Both a ValueError (a bad request, like every argument error of the package) and an
    ImportError (what a missing library raises)."""


CUPY_INSTALL_HINT = (
    "install the CuPy wheel that matches the NVIDIA driver: pip install -e '.[gpu]'"
    " (cupy-cuda12x, CUDA 12 drivers) or pip install cupy-cuda13x (CUDA 13 drivers);"
    " nvidia-smi shows the driver's CUDA version"
)


@functools.cache
def require_cupy():
    """The ``cupy`` module, after checking that it is installed and finds a usable GPU.

    Raises BackendUnavailableError with one message and the install hint where CuPy is
    missing, or where CuPy finds no GPU or no working driver (the driver's own error, one
    line, instead of its traceback). A successful check is remembered for the process.
    """
    try:
        import cupy
    except ImportError as error:
        raise BackendUnavailableError(
            f"CuPy was asked for but cannot be imported ({error}); {CUPY_INSTALL_HINT}"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count > 0:
            cupy.empty(1)  # an allocation on the current device: a working driver and GPU
    except Exception as error:  # noqa: BLE001 - CUDA errors come in several classes
        problem = " ".join(str(error).split()) or type(error).__name__
        raise BackendUnavailableError(
            f"CuPy is installed but cannot use a GPU ({problem}); check the NVIDIA driver"
            f" with nvidia-smi, or {CUPY_INSTALL_HINT}"
        ) from None
    if count == 0:
        raise BackendUnavailableError(f"CuPy is installed but finds no GPU; {CUPY_INSTALL_HINT}")
    return cupy


def resolve_namespace(xp=None, name: str = "xp"):
    """The array namespace ``xp`` names: None or "numpy" is NumPy, "cupy" is CuPy's
    array-API namespace (``array_api_compat.cupy``), and a namespace is returned as it is.
    Asking for CuPy, by name or by namespace, checks it can run (:func:`require_cupy`)."""
    if xp is None or (isinstance(xp, str) and xp == "numpy"):
        return numpy
    if isinstance(xp, str):
        if xp != "cupy":
            raise ValueError(f"{name} must be 'numpy', 'cupy' or an array namespace, got {xp!r}")
        require_cupy()
        return importlib.import_module("array_api_compat.cupy")
    if xp is not numpy and array_api_compat.is_cupy_namespace(xp):
        require_cupy()
    return xp


def resolve_dtype(xp, dtype=None):
    """``dtype`` in namespace ``xp``: accepts None (float64), "float32", numpy.float32,
    or a dtype of ``xp`` itself."""
    if dtype is None:
        return xp.float64
    if isinstance(dtype, str):
        return getattr(xp, dtype)
    try:
        name = numpy.dtype(dtype).name
    except TypeError:
        return dtype  # already a dtype of xp
    return getattr(xp, name)


def device(x: Array):
    """The device an array lives on (``"cpu"`` for NumPy, without array_api_compat's
    dispatch: about 0.1 µs against 0.3 to 0.5 µs a call on one core, NumPy 2.4 and
    array_api_compat 1.16)."""
    if type(x) is numpy.ndarray:
        return "cpu"
    return array_api_compat.device(x)


def reshape(x: Array, shape: tuple) -> Array:
    """``xp.reshape(x, shape)``; for a NumPy array its ``reshape`` method, the same view or
    copy without ``numpy.reshape``'s Python wrapper (about 0.25 µs against 1.2 µs a call, and
    the fast training step reshapes about thirty times). For the speed modules
    (``model_fast``, ``optim_fast``); the textbook layers call ``xp.reshape``."""
    if type(x) is numpy.ndarray:
        return x.reshape(shape)
    return namespace(x).reshape(x, shape)


def permute_dims(x: Array, axes: tuple) -> Array:
    """``xp.permute_dims(x, axes)``; for a NumPy array its ``transpose`` method (the same
    view, without ``numpy.permute_dims``'s Python wrapper: about 0.36 µs against 0.76 µs).
    For the speed modules, as :func:`reshape`."""
    if type(x) is numpy.ndarray:
        return x.transpose(axes)
    return namespace(x).permute_dims(x, axes)


def cached_per_device(maxsize: int):
    """Memoise ``make(xp, ..., dev)``, whose last argument is a device, for the constant
    arrays of the speed modules. Devices that cannot be hashed (CuPy's ``Device``) are
    not cached: their arrays are made afresh each call, one kernel launch beside the
    work they serve."""

    def decorate(make: Callable) -> Callable:
        cached = functools.lru_cache(maxsize=maxsize)(make)

        @functools.wraps(make)
        def wrapper(*args):
            try:
                hash(args[-1])
            except TypeError:
                return make(*args)
            return cached(*args)

        wrapper.cache_clear = cached.cache_clear
        return wrapper

    return decorate


@cached_per_device(maxsize=64)
def constant(xp, shape: tuple, value: float, dtype, dev) -> Array:
    """A read-only array of ``shape`` filled with ``value``, made once per namespace, shape,
    value, dtype and device (where the device can be hashed: :func:`cached_per_device`):
    the vectors of ones that turn sums into products in the speed modules. Every use
    reads it (products, broadcasting), none writes it; NumPy's copy is marked read-only
    so that a write would raise.
    """
    a = xp.full(shape, value, dtype=dtype, device=dev)
    if type(a) is numpy.ndarray:
        a.flags.writeable = False
    return a


def is_numpy(xp) -> bool:
    """Whether ``xp`` is NumPy: ``numpy`` itself or array_api_compat's NumPy wrapper."""
    return xp is numpy or array_api_compat.is_numpy_namespace(xp)


# ---------------------------------------------------------------------------------------
# The error function. It is not part of the array API standard, so take the library's
# own where it has one and fall back to a series that uses standard calls only.
# ---------------------------------------------------------------------------------------

_SQRT_PI = math.sqrt(math.pi)


def erf(x: Array) -> Array:
    """erf(x) = 2/√π ∫₀ˣ e^{−t²} dt, elementwise, in the namespace of ``x``."""
    xp = namespace(x)
    if is_numpy(xp):
        import scipy.special

        return scipy.special.erf(x)
    if array_api_compat.is_cupy_namespace(xp):
        import cupyx.scipy.special

        return cupyx.scipy.special.erf(x)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.special.erf(x)
    return erf_array_api(x)


def erf_array_api(x: Array, n_series: int = 90, n_fraction: int = 60) -> Array:
    """erf from standard array-API calls only, to about 2e-15 relative in float64.

    Measured against scipy.special.erf at 4·10⁷ random points of [2, 3] and 4·10⁶ of
    [−12, 12]: at most 18 ulp of the value (2.0e-15 relative, at x = 2.919), the worst
    for 2 < |x| < 3, where 30 to 40 terms of the series are above rounding; within 1 ulp
    for |x| ≥ 3.

    For |x| < 3 the series with positive terms (no cancellation)
        erf(x) = 2/√π · e^{−x²} · Σₙ 2ⁿ x^{2n+1} / (1·3·5···(2n+1));
    for |x| ≥ 3 the continued fraction
        erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...))))),
    evaluated from the tail. Abramowitz & Stegun 7.1.6 and 7.1.14.
    """
    xp = namespace(x)
    a = xp.abs(x)
    small = xp.where(a < 3.0, a, xp.zeros_like(a))
    # erfc(30) < 1e-390: erf is 1 to double precision there, and x² cannot overflow
    large = xp.where(a < 3.0, xp.full_like(a, 3.0), xp.where(a < 30.0, a, xp.full_like(a, 30.0)))

    # Series, summed from the small terms upwards is not needed: terms are positive.
    term = small
    total = small
    two_x2 = 2.0 * small * small
    for n in range(1, n_series):
        term = term * two_x2 / (2 * n + 1)
        total = total + term
    erf_small = (2.0 / _SQRT_PI) * xp.exp(-small * small) * total

    # Continued fraction for erfc, evaluated backwards: K = x + (k/2) / K.
    tail = large
    for k in range(n_fraction, 0, -1):
        tail = large + (k / 2.0) / tail
    erf_large = 1.0 - xp.exp(-large * large) / (_SQRT_PI * tail)

    return xp.sign(x) * xp.where(a < 3.0, erf_small, erf_large)


# ---------------------------------------------------------------------------------------
# Trees of parameters: NamedTuple records, tuples and None leaves.
# ---------------------------------------------------------------------------------------


def _is_record(tree) -> bool:
    return isinstance(tree, tuple) and hasattr(tree, "_fields")


def tree_map(fn: Callable, tree, *rest):
    """Apply ``fn`` to every array of ``tree`` (and the matching arrays of ``rest``).

    Records (NamedTuple) and tuples are rebuilt with the same type; ``None`` stays
    ``None``. Nothing is modified in place. The trees of ``rest`` must have the tuples
    and the None entries of ``tree`` (a ValueError otherwise: zip would silently drop
    the blocks of the longer tree).
    """
    if tree is None:
        if any(part is not None for part in rest):
            raise ValueError("tree_map: the trees do not match: an entry of tree is None but"
                             " the same entry of rest is set")
        return None
    if isinstance(tree, tuple):
        for part in rest:
            if not isinstance(part, tuple) or len(part) != len(tree):
                got = f"{len(part)} entries" if isinstance(part, tuple) else type(part).__name__
                raise ValueError(
                    f"tree_map: the trees do not match: a {type(tree).__name__} of"
                    f" {len(tree)} entries in tree, {got} in rest"
                )
        parts = (tree_map(fn, *entries) for entries in zip(tree, *rest))
        return type(tree)(*parts) if _is_record(tree) else tuple(parts)
    return fn(tree, *rest)


def tree_leaves(tree, prefix: str = "") -> list[tuple[str, Array]]:
    """``[(dotted_name, array), ...]`` in a fixed order, e.g. ``blocks.0.mlp.W1``."""
    if tree is None:
        return []
    if _is_record(tree):
        out = []
        for name, part in zip(tree._fields, tree):
            out += tree_leaves(part, f"{prefix}{name}.")
        return out
    if isinstance(tree, tuple):
        out = []
        for i, part in enumerate(tree):
            out += tree_leaves(part, f"{prefix}{i}.")
        return out
    return [(prefix[:-1], tree)]


def _is_complex(a) -> bool:
    """Whether ``a`` is an array of complex numbers, in any namespace (False for values
    that are not arrays)."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or not hasattr(a, "shape"):
        return False
    kind = getattr(dtype, "kind", None)  # NumPy and CuPy
    if kind is not None:
        return kind == "c"
    try:
        return bool(namespace(a).isdtype(dtype, "complex floating"))
    except Exception:  # noqa: BLE001 - not an array this package knows
        return False


def to_device(tree, target: str = "numpy", dtype=None):
    """Move every array of a tree to another backend, optionally changing its dtype.

    ``target`` is ``"numpy"`` (host) or ``"cupy"`` (the current GPU). Works on
    parameter records, caches, patches and plain arrays. Besides it, arrays reach a device
    when they are made (parameters and prompts are drawn on the host and moved once with
    ``xp.asarray``), and the theorem checks read a few numbers back (finiteness, ‖u_∅‖ ≠
    0); no training step moves data.
    """
    if target == "numpy":

        def move(a):
            if array_api_compat.is_cupy_array(a):
                a = a.get()
            elif isinstance(a, numpy.generic):  # a NumPy scalar: no DLPack
                a = numpy.asarray(a)
            elif not isinstance(a, numpy.ndarray):
                a = numpy.from_dlpack(a)  # any other array-API array on the host
            return a if dtype is None else a.astype(dtype)

    elif target == "cupy":
        cupy = require_cupy()

        def move(a):
            a = cupy.asarray(a)
            return a if dtype is None else a.astype(dtype)

    else:
        raise ValueError(f"to_device: unknown target {target!r}; use 'numpy' or 'cupy'")
    if dtype is not None:
        from .validation import check_float_dtype  # validation imports this module

        dtype = check_float_dtype(numpy, dtype)
        for name, a in tree_leaves(tree):
            if _is_complex(a):
                raise TypeError(
                    f"to_device: {name or 'tree'} is complex ({a.dtype}): dtype"
                    f" {numpy.dtype(dtype)} would drop its imaginary part"
                )

    def move_arrays(a):
        # records also hold plain Python values (head counts, flags): leave those alone
        return move(a) if hasattr(a, "shape") and hasattr(a, "dtype") else a

    return tree_map(move_arrays, tree)
