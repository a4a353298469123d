"""The backend module: the array-API error function, namespaces and dtypes, and trees.

The model-level portability checks (array_api_strict's "device1" against NumPy, float32)
live in test_model.py, next to the grid of configurations they run on.
"""

from __future__ import annotations

import math

import array_api_strict
import numpy
import pytest
import scipy.special

from minimal_icl import (
    IDENTITY_RTOL,
    BlockPatch,
    TransformerConfig,
    init_params,
    relative_residual,
    to_device,
    tree_leaves,
    tree_map,
)
from minimal_icl.backend import (
    constant,
    device,
    erf,
    erf_array_api,
    namespace,
    reshape,
    resolve_dtype,
)

DEVICE1 = array_api_strict.Device("device1")
# erf from standard calls against scipy.special.erf, in units of the spacing at the exact
# value: at most ERF_ULP (measured 14 in float64 on erf_grid, 8 in float32), and a median
# of at most ERF_MEDIAN_ULP (measured 0).
ERF_ULP = 16.0
ERF_MEDIAN_ULP = 1.0
# One rounding to float32 moves a number by at most this much of itself (the unit
# roundoff 2⁻²⁴).
FLOAT32_ROUNDING = 2.0**-24


# ---------------------------------------------------------------------------------------
# erf from standard calls only
# ---------------------------------------------------------------------------------------


def ulp_error(approx, exact):
    """|approx − exact| in units of the float64 spacing at |exact|."""
    return numpy.abs(approx - exact) / numpy.spacing(numpy.abs(exact))


def erf_grid():
    rng = numpy.random.default_rng(0)
    return numpy.concatenate(
        [
            numpy.linspace(-12.0, 12.0, 24001),
            rng.uniform(-4.0, 4.0, 20000),
            numpy.logspace(-300, 0, 301),
            -numpy.logspace(-300, 0, 301),
            [numpy.nextafter(3.0, 0.0), 3.0, -3.0, 29.9, 30.0, 1e300, -1e300],
        ]
    )


def test_erf_array_api_matches_scipy_to_a_few_ulp():
    """Over [−12, 12] (and tiny and huge |x|) within ERF_ULP = 16 ulp of scipy.special.erf;
    measured on this grid at most 14 ulp, at |x| ≈ 2.8 (at random points of [2, 3] up to
    18 ulp, 2.0e-15 relative: ``test_erf_array_api_worst_measured_point``). scipy itself
    is within 2 ulp of the exact value there."""
    x = erf_grid()
    with numpy.errstate(
        over="raise", invalid="raise", divide="raise"
    ):  # x² of 1e300 must not overflow
        approx = erf_array_api(x)
    errors = ulp_error(approx, scipy.special.erf(x))
    assert errors.max() <= ERF_ULP
    assert numpy.median(errors) <= ERF_MEDIAN_ULP


def test_erf_array_api_worst_measured_point():
    """The worst of 4·10⁷ random points of [2, 3] (erf_array_api's docstring): 18 ulp of
    scipy.special.erf there (18.3 of the exact value, mpmath at 40 digits), 2.0e-15
    relative, and no more."""
    x = numpy.array([2.9188541642848254, -2.9188541642848254])
    exact = scipy.special.erf(x)
    errors = ulp_error(erf_array_api(x), exact)
    assert numpy.all(errors <= 18.0)
    assert numpy.all(numpy.abs(erf_array_api(x) - exact) / numpy.abs(exact) <= 2.0e-15)


def test_erf_array_api_special_values():
    x = numpy.array([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324])
    y = erf_array_api(x)
    assert y[0] == 0.0 and y[1] == 0.0 and y[2] == 1.0 and y[3] == -1.0 and math.isnan(y[4])
    assert y[5] == scipy.special.erf(5e-324)
    x = erf_grid()
    numpy.testing.assert_array_equal(erf_array_api(-x), -erf_array_api(x))  # odd


def test_erf_array_api_float32():
    """float32 in, float32 out, within ERF_ULP = 16 float32 ulp (measured 8)."""
    x = numpy.linspace(-12.0, 12.0, 24001, dtype=numpy.float32)
    y = erf_array_api(x)
    assert y.dtype == numpy.float32
    exact = scipy.special.erf(x.astype(numpy.float64))
    spacing32 = numpy.spacing(numpy.abs(exact).astype(numpy.float32)).astype(numpy.float64)
    assert numpy.max(numpy.abs(y - exact) / spacing32) <= ERF_ULP


def test_erf_dispatch(backend):
    """erf takes the library's own where it has one (scipy on NumPy, cupyx on CuPy) and
    the standard-calls series elsewhere (array_api_strict), on the input's device."""
    x_np = erf_grid()
    x = backend.asarray(x_np)
    y = erf(x)
    assert device(y) == device(x) and y.dtype == x.dtype
    y = backend.to_numpy(y)
    if backend.name == "numpy":
        numpy.testing.assert_array_equal(y, scipy.special.erf(x_np))
    elif backend.name.startswith("array_api_strict"):
        numpy.testing.assert_array_equal(y, erf_array_api(x_np))
    assert ulp_error(y, scipy.special.erf(x_np)).max() <= ERF_ULP


# ---------------------------------------------------------------------------------------
# Namespaces, dtypes, devices
# ---------------------------------------------------------------------------------------


def test_namespace():
    a = numpy.zeros(2)
    assert namespace(a) is numpy and namespace(a, None, a) is numpy
    s = array_api_strict.asarray([1.0], device=DEVICE1)
    xp = namespace(s, None)
    assert xp.__name__ == "array_api_strict"
    with pytest.raises(TypeError):
        namespace(a, s)  # two libraries at once


def test_resolve_dtype():
    assert resolve_dtype(numpy) is numpy.float64
    assert resolve_dtype(numpy, "float32") is numpy.float32
    assert resolve_dtype(numpy, numpy.float32) is numpy.float32
    xp = array_api_strict
    assert resolve_dtype(xp) == xp.float64
    assert resolve_dtype(xp, "float32") == xp.float32
    assert resolve_dtype(xp, numpy.float32) == xp.float32
    assert resolve_dtype(xp, xp.float32) == xp.float32  # already a dtype of xp


def test_device():
    assert device(numpy.zeros(2)) == "cpu"
    assert device(array_api_strict.asarray([1.0], device=DEVICE1)) == DEVICE1


def test_reshape_is_the_namespaces_reshape():
    """backend.reshape gives xp.reshape's array (values, shape, and a view where xp gives
    one) for NumPy through the method and for array_api_strict through its namespace."""
    a = numpy.arange(24.0).reshape(2, 3, 4)
    b = reshape(a, (6, 4))
    assert b.shape == (6, 4) and numpy.array_equal(b, numpy.reshape(a, (6, 4)))
    assert numpy.shares_memory(a, b)
    c = reshape(numpy.swapaxes(a, 1, 2), (2, 12))  # not a view: a copy in row order
    assert numpy.array_equal(c, numpy.reshape(numpy.swapaxes(a, 1, 2), (2, 12)))
    s = array_api_strict.asarray(a, device=DEVICE1)
    t = reshape(s, (4, 6))
    assert type(t) is type(s) and t.shape == (4, 6) and device(t) == DEVICE1
    on_cpu = array_api_strict.asarray(t, device=array_api_strict.Device("CPU_DEVICE"))
    assert numpy.array_equal(numpy.asarray(on_cpu), a.reshape(4, 6))


def test_constant_is_made_once_and_read_only():
    """backend.constant fills an array of the shape, value, dtype and device asked for,
    returns the same array on the next call, and NumPy's copy refuses writes."""
    ones = constant(numpy, (3, 1), -1.0, numpy.float32, "cpu")
    assert ones.shape == (3, 1) and ones.dtype == numpy.float32 and numpy.all(ones == -1.0)
    assert constant(numpy, (3, 1), -1.0, numpy.float32, "cpu") is ones
    assert constant(numpy, (3, 1), -1.0, numpy.float64, "cpu") is not ones
    with pytest.raises(ValueError, match="read-only"):
        ones[0, 0] = 2.0
    x = array_api_strict
    zero = constant(x, (), 0.0, x.float64, DEVICE1)
    assert zero.shape == () and device(zero) == DEVICE1 and float(zero) == 0.0


def test_constant_on_every_backend(backend):
    """The constants of the speed modules are made on the device asked for, on every
    backend (CuPy's devices cannot be hashed, so they are not cached there)."""
    dev = device(backend.asarray(0.0))
    minus_ones = constant(backend.xp, (2, 1), -1.0, backend.asarray(0.0).dtype, dev)
    assert device(minus_ones) == dev and minus_ones.shape == (2, 1)
    assert numpy.array_equal(backend.to_numpy(minus_ones), -numpy.ones((2, 1)))


class _UnhashableDevice:
    __hash__ = None  # like cupy.cuda.Device


def test_constant_on_an_unhashable_device_is_made_afresh():
    made = []

    class Namespace:
        @staticmethod
        def full(shape, value, dtype=None, device=None):
            made.append(device)
            return numpy.full(shape, value, dtype=dtype)

    dev = _UnhashableDevice()
    first = constant(Namespace, (2,), 1.0, numpy.float64, dev)
    second = constant(Namespace, (2,), 1.0, numpy.float64, dev)
    assert first is not second and made == [dev, dev]
    assert numpy.array_equal(first, numpy.ones(2)) and numpy.array_equal(second, first)


def test_relative_residual(backend):
    a = backend.asarray([1.0, -4.0])
    assert relative_residual(a, a) == 0.0
    zero = backend.asarray([0.0, 0.0])
    assert relative_residual(zero, zero) == 0.0
    assert relative_residual(a, backend.asarray([1.0, -2.0])) == 0.5  # |−4 − (−2)| / 4
    assert relative_residual(a, a + 1e-13) <= IDENTITY_RTOL


# ---------------------------------------------------------------------------------------
# Trees: NamedTuple records, tuples, None
# ---------------------------------------------------------------------------------------

CONFIG = TransformerConfig(d_token=3, n_blocks=2, n_heads=1, d_head=2, d_mlp=4)


def test_tree_leaves_names_and_order():
    params = init_params(CONFIG)
    names = [name for name, _ in tree_leaves(params)]
    per_block = [
        "attn.W_Q",
        "attn.W_K",
        "attn.W_V",
        "attn.W_O",
        "mlp.W1",
        "mlp.b1",
        "mlp.W2",
        "mlp.b2",
    ]
    assert names == [f"blocks.{l}.{n}" for l in range(2) for n in per_block]  # ln1, ln2 None
    assert tree_leaves(None) == []
    a = numpy.zeros(2)
    assert tree_leaves(a) == [("", a)]
    assert [n for n, _ in tree_leaves((a, (None, a)))] == ["0", "1.1"]
    with_ln = init_params(TransformerConfig(d_token=3, layer_norm=True))
    assert [n for n, _ in tree_leaves(with_ln)][-4:] == [
        "blocks.0.ln1.gain",
        "blocks.0.ln1.bias",
        "blocks.0.ln2.gain",
        "blocks.0.ln2.bias",
    ]


def test_tree_map_rebuilds_records_and_keeps_none():
    params = init_params(CONFIG, seed=1)
    before = [a.copy() for _, a in tree_leaves(params)]
    doubled = tree_map(lambda a: 2.0 * a, params)
    assert type(doubled) is type(params)
    assert type(doubled.blocks) is tuple and type(doubled.blocks[0]) is type(params.blocks[0])
    assert doubled.blocks[0].ln1 is None
    for (name, a), (_, b), old in zip(tree_leaves(doubled), tree_leaves(params), before):
        assert numpy.array_equal(a, 2.0 * b), name
        assert numpy.array_equal(b, old), name  # nothing modified in place
    summed = tree_map(lambda a, b: a + b, params, doubled)  # several trees, leaf by leaf
    for (name, s), (_, b) in zip(tree_leaves(summed), tree_leaves(params)):
        assert numpy.array_equal(s, 3.0 * b), name
    patches = (BlockPatch(numpy.ones((1, 4, 3)), numpy.ones((1, 3))), None)
    moved = tree_map(numpy.negative, patches)
    assert isinstance(moved[0], BlockPatch) and moved[1] is None and moved[0].delta_b[0, 0] == -1.0
    assert tree_map(numpy.negative, None) is None


def test_to_device_numpy_round_trip_with_dtype():
    params = init_params(CONFIG, seed=2)
    as32 = to_device(params, "numpy", dtype=numpy.float32)
    assert type(as32) is type(params)
    for (name, a), (_, b) in zip(tree_leaves(as32), tree_leaves(params)):
        assert a.dtype == numpy.float32 and numpy.array_equal(a, b.astype(numpy.float32)), name
    back = to_device(as32, "numpy", dtype=numpy.float64)
    for (name, a), (_, b) in zip(tree_leaves(back), tree_leaves(params)):
        assert a.dtype == numpy.float64, name
        assert numpy.array_equal(a, b.astype(numpy.float32).astype(numpy.float64)), name  # exact
        assert relative_residual(a, b) <= FLOAT32_ROUNDING, name
    same = to_device(params, "numpy")
    for (name, a), (_, b) in zip(tree_leaves(same), tree_leaves(params)):
        assert a.dtype == numpy.float64 and numpy.array_equal(a, b), name
    with pytest.raises(ValueError, match="unknown target 'tpu'"):
        to_device(params, "tpu")


def test_to_device_brings_another_backend_home_and_keeps_plain_values():
    """Arrays of any host backend (here array_api_strict's second device) come back as
    NumPy arrays, bit for bit; a cache's plain Python fields (head counts, flags) stay."""
    from minimal_icl import forward

    params = init_params(CONFIG, seed=3)
    strict = init_params(CONFIG, seed=3, xp=array_api_strict, device=DEVICE1)
    home = to_device(strict, "numpy")
    for (name, a), (_, b) in zip(tree_leaves(home), tree_leaves(params)):
        assert type(a) is numpy.ndarray and numpy.array_equal(a, b), name

    tokens = numpy.random.default_rng(0).standard_normal((2, 4, CONFIG.d_token))
    _, cache = forward(strict, CONFIG, array_api_strict.asarray(tokens, device=DEVICE1))
    cache_home = to_device(cache, "numpy")
    attn = cache_home.blocks[0].attn
    assert attn.n_heads == CONFIG.n_heads and attn.last_only is False
    assert type(attn.weights) is numpy.ndarray
