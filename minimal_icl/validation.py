"""Argument checks for the public entry points, all in one module.

The layer functions (linear, attention, LayerNorm, MLP, block) hold only the mathematics
and trust their inputs. The functions a user calls check their arguments here first:

    forward, predict        check_params, check_tokens, check_patches, check_forward_finite
    backward                check_dout
    implicit_update         check_params, check_prompt, removed_positions
    implicit_path, factorised_path
                            check_params, check_single_block, check_prompt,
                            check_states_finite; their methods check_index
    sgd_*, adam_*           check_learning_rate, check_fraction, check_positive_float,
                            check_same_tree, check_adam_state, check_sgd_state
    init_params, data       check_config, check_seed, check_generator, check_positive_int,
                            check_non_negative, check_float_dtype, check_namespace
    train                   the data checks, check_params, check_token_width,
                            check_optimizer_settings (OptimizerSettings on creation)
    save_checkpoint, the command line
                            check_writable_file

Every check raises a ValueError or a TypeError (TypeError for an argument of the wrong
kind: an integer or complex dtype, an int where a sequence is needed) whose message
names the argument and says what is wrong. Shapes, dtypes and record types are free to
check; the values of an array are read back from its device in three places only, one
boolean each: :func:`check_forward_finite` (the tokens and the output of ``forward``),
:func:`check_prompt` (the context and query of the theorems) and
:func:`check_states_finite` (the query's states along Proposition 3.1's paths). The
causes of a failure are looked for only after it.

docs/validation.md lists what each entry point validates.
"""

from __future__ import annotations

import functools
import math
import operator
import os
from collections.abc import Iterator

import numpy

from .backend import Array, device, namespace, resolve_dtype, resolve_namespace, tree_leaves
from .config import TransformerConfig
from .params import AttentionParams, BlockParams, LayerNormParams, MLPParams, ModelParams
from .rnn import RNNParams

# -- numbers ---------------------------------------------------------------------------


def _is_integer(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, numpy.integer))


def _is_real(value) -> bool:
    numbers = (int, float, numpy.integer, numpy.floating)
    return not isinstance(value, bool) and isinstance(value, numbers)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an int ≥ 1."""
    if not _is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, or a ValueError naming ``name`` unless it is an int ≥ 0."""
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"{name} must be an int ≥ 0, got {seed!r}")
    return int(seed)


def check_generator(seed, name: str = "seed") -> numpy.random.Generator:
    """A ``numpy.random.Generator``: ``seed`` itself, or a new one from an int ≥ 0."""
    if isinstance(seed, numpy.random.Generator):
        return seed
    if not _is_integer(seed) or seed < 0:
        raise ValueError(f"{name} must be an int ≥ 0 or a numpy Generator, got {seed!r}")
    return numpy.random.default_rng(int(seed))


def check_non_negative(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is finite and ≥ 0."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite float ≥ 0, got {value!r}")
    return float(value)


def check_positive_float(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is finite and > 0."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return float(value)


def check_fraction(name: str, value) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless 0 ≤ value < 1."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_learning_rate(lr, name: str = "lr") -> float:
    """The learning rate as a float: finite and ≥ 0."""
    if not _is_real(lr) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"learning rate {name} must be a finite float ≥ 0, got {lr!r}")
    return float(lr)


# -- dtypes and namespaces ---------------------------------------------------------------

_REAL_FLOATING: dict = {}  # (type, dtype) -> bool, filled on first sight


def is_real_floating(dtype, xp=None) -> bool:
    """Whether ``dtype`` is a real floating-point dtype (float16/32/64), in any namespace."""
    key = (type(dtype), dtype)  # the type first: dtypes of two libraries never compared
    known = _REAL_FLOATING.get(key)
    if known is None:
        kind = getattr(dtype, "kind", None)  # NumPy and CuPy dtypes
        if kind is not None:
            known = kind == "f"
        else:
            try:
                known = bool(xp.isdtype(dtype, "real floating"))
            except Exception:  # noqa: BLE001 - not a dtype this namespace knows
                return False
        _REAL_FLOATING[key] = known
    return known


def _dtype_problem(dtype) -> str:
    """Why a dtype is refused, in words."""
    name = str(dtype)
    if "int" in name:
        return "integers would truncate every value"
    if "complex" in name:
        return "complex numbers are not a model input"
    if "bool" in name:
        return "booleans are not numbers"
    return "it is not a real floating-point type"


def check_float_array(name: str, a) -> None:
    """A TypeError naming ``name`` unless ``a`` is an array of real floating point."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or not hasattr(a, "shape"):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if not is_real_floating(dtype, namespace(a)):
        raise TypeError(
            f"{name}: dtype {dtype} is refused; only real floating point (float32, float64)"
            f" is accepted: {_dtype_problem(dtype)}"
        )


def check_namespace(xp, name: str = "xp"):
    """The array namespace asked for: None or "numpy" is NumPy, "cupy" is CuPy's array-API
    namespace (a clear error where CuPy or a usable GPU is missing), a namespace is itself."""
    if xp is not None and not isinstance(xp, str) and not hasattr(xp, "asarray"):
        raise TypeError(
            f"{name} must be an array namespace (numpy, array_api_compat.cupy, ...) or one of"
            f" 'numpy', 'cupy', got {type(xp).__name__}"
        )
    return resolve_namespace(xp, name)


def check_float_dtype(xp, dtype, name: str = "dtype"):
    """``dtype`` resolved in ``xp``; a TypeError naming ``name`` unless real floating point."""
    try:
        resolved = resolve_dtype(xp, dtype)
    except (AttributeError, TypeError):
        library = getattr(xp, "__name__", xp)
        raise TypeError(f"{name} {dtype!r} is not a dtype of {library}") from None
    if not is_real_floating(resolved, xp):
        raise TypeError(
            f"{name} must be a real floating-point type (float32 or float64), got {dtype!r}:"
            f" {_dtype_problem(resolved)}"
        )
    return resolved


# -- the model ---------------------------------------------------------------------------


def check_config(config, name: str = "config") -> TransformerConfig:
    """A TypeError naming ``name`` unless ``config`` is a TransformerConfig."""
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"{name} must be a TransformerConfig, got {type(config).__name__}")
    return config


@functools.lru_cache(maxsize=64)
def _expected_shapes(config: TransformerConfig) -> dict:
    D, H, K, M = config.d_token, config.n_heads, config.d_head, config.d_mlp
    S = config.d_state
    HK = f"n_heads·d_head = {H}·{K}"
    return {
        "W_in": ((S, D), "(d_state, d_token)"),
        "W_s": ((S, S), "(d_state, d_state)"),
        "b": ((S,), "(d_state,)"),
        "W_out": ((D, S), "(d_token, d_state)"),
        "W_Q": ((H * K, D), f"({HK}, d_token)"),
        "W_K": ((H * K, D), f"({HK}, d_token)"),
        "W_V": ((H * K, D), f"({HK}, d_token)"),
        "W_O": ((D, H * K), f"(d_token, {HK})"),
        "W1": ((M, D), "(d_mlp, d_token)"),
        "b1": ((M,), "(d_mlp,)"),
        "W2": ((D, M), "(d_token, d_mlp)"),
        "b2": ((D,), "(d_token,)"),
        "gain": ((D,), "(d_token,)"),
        "bias": ((D,), "(d_token,)"),
    }


def check_params(params, config: TransformerConfig, name: str = "params") -> None:
    """A ValueError naming the parameter unless ``params`` is what ``config`` describes.

    Checks: a ModelParams of config.n_blocks BlockParams; every array with the shape the
    configuration gives it (W_Q, W_K, W_V (H·K, D), W_O (D, H·K), or for
    contextual_layer="rnn" W_in (S, D), W_s (S, S), b (S,), W_out (D, S); W1 (M, D), b1 (M,),
    W2 (D, M), b2 (D,), LayerNorm gain and bias (D,) exactly when config.layer_norm);
    every array real floating point, all of one dtype and one array type (TypeError).
    Two layouts with the same product n_heads·d_head have the same shapes, so that
    mismatch cannot be seen in the arrays: a checkpoint stores its configuration for that.
    """
    check_config(config)
    L = config.n_blocks
    if not isinstance(params, ModelParams) or not isinstance(params.blocks, tuple) or len(
        params.blocks
    ) != L:
        n = len(params.blocks) if isinstance(params, ModelParams) else None
        raise ValueError(
            f"{name} must be a ModelParams with {L} blocks, got {type(params).__name__}"
            f" with {n} blocks (config.n_blocks = {L})"
        )
    expected = _expected_shapes(config)
    contextual = RNNParams if config.contextual_layer == "rnn" else AttentionParams
    first = first_name = None
    for l, block in enumerate(params.blocks):
        if not isinstance(block, BlockParams):
            raise ValueError(
                f"{name}.blocks[{l}] must be a BlockParams, got {type(block).__name__}"
            )
        for part, record, kind in (
            ("attn", block.attn, contextual),
            ("mlp", block.mlp, MLPParams),
            ("ln1", block.ln1, LayerNormParams),
            ("ln2", block.ln2, LayerNormParams),
        ):
            if kind is LayerNormParams:
                if (record is not None) != config.layer_norm:
                    raise ValueError(
                        f"block {l}: {part} is {'set' if record is not None else 'None'} but"
                        f" config.layer_norm = {config.layer_norm} ({name}.blocks[{l}].{part})"
                    )
                if record is None:
                    continue
            if not isinstance(record, kind):
                raise ValueError(
                    f"{name}.blocks[{l}].{part} must be a {kind.__name__},"
                    f" got {type(record).__name__}"
                    + (f" (config.contextual_layer = {config.contextual_layer!r})"
                       if part == "attn" else "")
                )
            for field, value in zip(record._fields, record):
                shape = getattr(value, "shape", None)
                want, formula = expected[field]
                if shape is None or tuple(shape) != want:
                    label = f"{part}.{field}" if kind is LayerNormParams else field
                    raise ValueError(
                        f"block {l}: {label} has shape {None if shape is None else tuple(shape)},"
                        f" config expects {want} = {formula} ({name}.blocks[{l}].{part}.{field})"
                    )
                if first is None:
                    check_float_array(f"{name}.blocks[{l}].{part}.{field}", value)
                    first, first_name = value, f"{name}.blocks[{l}].{part}.{field}"
                elif type(value) is not type(first):
                    raise TypeError(
                        f"{name}.blocks[{l}].{part}.{field} is a {type(value).__name__} but"
                        f" {first_name} is a {type(first).__name__}: move all"
                        " parameters with to_device"
                    )
                elif value.dtype != first.dtype:
                    check_float_array(f"{name}.blocks[{l}].{part}.{field}", value)
                    raise TypeError(
                        f"{name}.blocks[{l}].{part}.{field} has dtype {value.dtype} but the other"
                        f" parameters have {first.dtype}: use one dtype for all parameters"
                    )


def _same_array_type(name: str, a, other_name: str, other) -> None:
    if type(a) is not type(other):
        raise TypeError(
            f"{name} is a {type(a).__name__} but {other_name} are {type(other).__name__}s:"
            " move one of them with to_device"
        )
    if type(a) is not numpy.ndarray and device(a) != device(other):
        raise ValueError(
            f"{name} live on device {device(a)} but {other_name} on {device(other)}:"
            " move one of them with to_device"
        )


def check_tokens(
    tokens: Array, config: TransformerConfig, params=None, name: str = "tokens"
) -> None:
    """A ValueError naming ``name`` unless ``tokens`` is a (B, T, d_token) array with B,
    T ≥ 1; a TypeError unless it is real floating point (and, when ``params`` are given,
    the same array type on the same device as they are). Reads no values."""
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{name} must have shape (B, T, d_token), got shape {shape}")
    if shape[-1] != config.d_token:
        raise ValueError(f"{name} have width {shape[-1]} but config.d_token = {config.d_token}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name} must hold at least one prompt of one token, got shape {shape}")
    check_float_array(name, tokens)
    if params is not None:
        _same_array_type(name, tokens, "params", params.blocks[0].mlp.W1)


def check_patches(
    patches, config: TransformerConfig, n_prompts: int, name: str = "patches"
) -> None:
    """None, or one entry per block, each None or a record with delta_W (B, M, D) and
    delta_b (B, D) of real floating point (a ``BlockPatch`` or an ``ImplicitUpdate``)."""
    if patches is None:
        return
    L = config.n_blocks
    if hasattr(patches, "delta_W"):
        raise ValueError(
            f"{name} must hold one entry per block ({L}), got a single {type(patches).__name__}:"
            " pass the whole tuple that implicit_update returns, or (patch,) for one block"
        )
    if not isinstance(patches, (tuple, list)):
        raise TypeError(
            f"{name} must be None or a tuple with one entry per block ({L}), got"
            f" {type(patches).__name__}"
        )
    if len(patches) != L:
        raise ValueError(f"{name} must hold one entry per block ({L}), got {len(patches)}")
    B, M, D = n_prompts, config.d_mlp, config.d_token
    for l, patch in enumerate(patches):
        if patch is None:
            continue
        if not (hasattr(patch, "delta_W") and hasattr(patch, "delta_b")):
            raise TypeError(
                f"{name}[{l}] must be None, a BlockPatch or an ImplicitUpdate, got"
                f" {type(patch).__name__}"
            )
        for field, expected in (("delta_W", (B, M, D)), ("delta_b", (B, D))):
            value = getattr(patch, field)
            shape = getattr(value, "shape", None)
            if shape is None or tuple(shape) != expected:
                raise ValueError(
                    f"patch for block {l}: {field} has shape"
                    f" {None if shape is None else tuple(shape)}, expected {expected}"
                    f" (one per prompt: tokens hold {B} prompts) ({name}[{l}].{field})"
                )
            check_float_array(f"{name}[{l}].{field}", value)


def _non_finite(xp, a):
    """A 0-d boolean: whether ``a`` holds NaN or ±inf."""
    return ~xp.all(xp.isfinite(a))


def _subnormal(xp, a):
    """A 0-d boolean: whether ``a`` holds a subnormal number (0 < |a| < smallest normal)."""
    magnitude = xp.abs(a)
    return xp.any((magnitude < xp.finfo(a.dtype).smallest_normal) & (magnitude > 0))


def _subnormal_message(name: str, dtype) -> str:
    tiny = float(numpy.finfo(str(dtype).rsplit(".", 1)[-1]).tiny)
    return (
        f"{name}: subnormal numbers (0 < |x| < {tiny:.3g}, the smallest normal {dtype}):"
        " they keep only a few significant digits, and ‖A‖² of such vectors underflows, so the"
        " theorem's 1/‖A‖² and the model's outputs lose their accuracy. Rescale the tokens"
        " (any scale from about 1e-300 to 1e+150 works in float64)"
    )


def check_forward_finite(tokens: Array, out: Array, params, patches, inputs=()) -> None:
    """One device-to-host read: tokens and output finite, tokens free of subnormal numbers.

    Only when that fails are the causes looked for, each named: NaN or infinity in the
    tokens, subnormal tokens, a non-finite parameter or patch, and otherwise an overflow
    inside the forward pass (``inputs``: each block's input, to name the block).
    """
    xp = namespace(tokens, out)
    bad = _non_finite(xp, tokens) | _non_finite(xp, out) | _subnormal(xp, tokens)
    if not bool(bad):
        return
    if bool(_non_finite(xp, tokens)):
        raise ValueError("tokens contain NaN or infinity")
    if bool(_subnormal(xp, tokens)):
        raise ValueError(_subnormal_message("tokens", tokens.dtype))
    for where, tree in (("params", params), ("patches", patches)):
        for field, value in tree_leaves(tree):
            if hasattr(value, "shape") and bool(_non_finite(xp, value)):
                raise ValueError(f"{where}.{field} contains NaN or infinity")
    block = len(inputs) - 1
    for l in range(1, len(inputs)):
        if bool(_non_finite(xp, inputs[l])):
            block = l - 1
            break
    largest = float(xp.max(xp.abs(tokens)))
    raise ValueError(
        f"the forward pass overflowed {tokens.dtype} in block {block}: the tokens are finite"
        f" (largest |entry| {largest:.3g}) but the block's output holds infinity or NaN."
        " Rescale the tokens" + (" or use float64" if "64" not in str(tokens.dtype) else "")
    )


def check_dout(dout: Array, cache, name: str = "dout") -> None:
    """``backward``'s arguments: ``cache`` from ``forward`` and ``dout`` of the output's
    shape (B, T, D), or (B, 1, D) after ``last_only``, the same array type, real floating."""
    inputs = getattr(cache, "inputs", None)
    if not (isinstance(inputs, tuple) and inputs and hasattr(cache, "blocks")
            and hasattr(cache, "last_only")):
        raise TypeError(
            f"cache must be the ModelCache that forward returned, got {type(cache).__name__}"
        )
    B, T, D = inputs[0].shape
    expected = (B, 1 if cache.last_only else T, D)
    shape = getattr(dout, "shape", None)
    if shape is None or tuple(shape) != expected:
        raise ValueError(
            f"{name} must have the shape of forward's output, {expected}"
            f"{' (last_only)' if cache.last_only else ''}, got shape"
            f" {None if shape is None else tuple(shape)}"
        )
    check_float_array(name, dout)
    _same_array_type(name, dout, "the forward pass's arrays", inputs[0])


# -- the theorems ------------------------------------------------------------------------


def check_prompt(config: TransformerConfig, context: Array, query: Array) -> None:
    """Raise naming the argument unless context is a (B, N, D) array and query a (B, D)
    array (D = config.d_token, B ≥ 1), both real floating point of one dtype, finite and
    free of subnormal numbers (one device-to-host read)."""
    check_config(config)
    D = config.d_token
    c_shape = getattr(context, "shape", None)
    q_shape = getattr(query, "shape", None)
    if c_shape is None or len(c_shape) != 3 or c_shape[-1] != D or c_shape[0] < 1:
        raise ValueError(
            f"context must have shape (B, N, d_token={D}) with B ≥ 1, got shape {c_shape}"
        )
    if q_shape is None or len(q_shape) != 2 or q_shape[-1] != D:
        raise ValueError(f"query must have shape (B, d_token={D}), got shape {q_shape}")
    if q_shape[0] != c_shape[0]:
        raise ValueError(
            f"query holds {q_shape[0]} prompts but context holds {c_shape[0]}: one query per prompt"
        )
    check_float_array("context", context)
    check_float_array("query", query)
    if context.dtype != query.dtype:
        raise TypeError(f"context ({context.dtype}) and query ({query.dtype}) must share a dtype")
    _same_array_type("query", query, "context", context)
    xp = namespace(context, query)
    bad = (
        _non_finite(xp, context) | _non_finite(xp, query)
        | _subnormal(xp, context) | _subnormal(xp, query)
    )
    if not bool(bad):
        return
    for name, a in (("context", context), ("query", query)):
        if bool(_non_finite(xp, a)):
            raise ValueError(f"{name} contains NaN or infinity")
    for name, a in (("context", context), ("query", query)):
        if bool(_subnormal(xp, a)):
            raise ValueError(_subnormal_message(name, a.dtype))


def removed_positions(removed, n_context: int) -> tuple[int, ...]:
    """The sorted context positions Y to remove; ``None`` means all of them (Y = C).

    ``removed`` is None or a collection of ints (list, tuple, range, set, 1-d integer
    array). A TypeError for an int (write [j]) or an iterator (it would be used up); a
    ValueError for a position that is not an int, out of range [0, N), or repeated.
    """
    if removed is None:
        return tuple(range(n_context))
    if isinstance(removed, (str, bytes)) or not hasattr(removed, "__iter__"):
        raise TypeError(
            f"removed must be None or a list of context positions, got {type(removed).__name__}"
            f" {removed!r}" + (f"; for one position write removed=[{removed!r}]"
                               if _is_integer(removed) else "")
        )
    if isinstance(removed, Iterator):
        raise TypeError(
            f"removed must be a list of context positions, not an iterator"
            f" ({type(removed).__name__}): an iterator is used up by one pass; pass list(...)"
        )
    if getattr(removed, "ndim", 1) != 1:
        raise ValueError(f"removed must be one-dimensional, got shape {removed.shape}")
    positions = []
    for j in removed:
        if isinstance(j, bool):
            raise ValueError(f"removed positions must be ints, got {j!r}")
        try:
            j = operator.index(j)
        except TypeError:
            raise ValueError(f"removed positions must be ints, got {j!r}") from None
        if not 0 <= j < n_context:
            raise ValueError(
                f"removed position {j} is out of range: the context has positions"
                f" 0..{n_context - 1}"
            )
        positions.append(j)
    if len(set(positions)) != len(positions):
        raise ValueError(f"removed positions must be distinct, got {list(removed)}")
    return tuple(sorted(positions))


def check_single_block(config: TransformerConfig, what: str) -> None:
    """A ValueError unless ``config`` has one block: Proposition 3.1 is about one block."""
    if config.n_blocks != 1:
        raise ValueError(
            f"{what} is stated for one contextual block (Proposition 3.1 in v1); this model has"
            f" {config.n_blocks} blocks. In a stack every block's patch for a prefix depends on"
            " the earlier blocks' outputs on that prefix, so there is no single weight path."
            " Use a one-block model, or implicit_update per prefix."
        )


def check_index(i, low: int, high: int, what: str) -> int:
    """``i`` as an int, or a ValueError unless it is an int in [low, high]."""
    try:
        j = None if isinstance(i, bool) else operator.index(i)
    except TypeError:
        j = None
    if j is None or not low <= j <= high:
        raise ValueError(f"{what} index must be an int in [{low}, {high}], got {i!r}")
    return j


def check_states_finite(states: Array, what: str) -> None:
    """A ValueError saying the forward pass overflowed if ``states`` hold NaN or infinity
    (one device-to-host read): the prefix states of Proposition 3.1's paths."""
    xp = namespace(states)
    if bool(_non_finite(xp, states)):
        raise ValueError(
            f"{what}: the forward pass overflowed {states.dtype}: the query's states hold"
            " infinity or NaN although the context and query are finite. Rescale the tokens"
        )


def check_token_width(config: TransformerConfig, d: int) -> None:
    """A ValueError unless regression prompts in dimension d fit: config.d_token = d + 1."""
    d = check_positive_int("d", d)
    if config.d_token != d + 1:
        raise ValueError(
            f"prompts in dimension d = {d} need config.d_token = {d + 1}, got {config.d_token}"
        )


# -- optimisers ---------------------------------------------------------------------------


def check_same_tree(name: str, tree, like_name: str, like) -> None:
    """A ValueError naming the first difference unless ``tree`` has the records, the
    None entries and the array shapes of ``like``; a TypeError unless its arrays are real
    floating point (the gradients or the velocity given to an optimiser with its params)."""
    if _same_tree(tree, like):  # the quick walk; the slow one below names the difference
        return

    def walk(a, b, where):
        if b is None or a is None:
            if (a is None) != (b is None):
                raise ValueError(
                    f"{name}{where} is {'None' if a is None else 'set'} but {like_name}{where} is"
                    f" {'None' if b is None else 'set'}: {name} do not match {like_name}"
                )
            return
        if isinstance(b, tuple):
            if not isinstance(a, tuple) or len(a) != len(b):
                n = len(a) if isinstance(a, tuple) else type(a).__name__
                raise ValueError(
                    f"{name}{where} has {n} entries but {like_name}{where} has {len(b)}:"
                    f" {name} do not match {like_name}"
                )
            fields = getattr(b, "_fields", None) or [str(i) for i in range(len(b))]
            for field, x, y in zip(fields, a, b):
                walk(x, y, f"{where}.{field}")
            return
        shape = getattr(a, "shape", None)
        if shape is None or tuple(shape) != tuple(b.shape):
            raise ValueError(
                f"{name}{where} has shape {None if shape is None else tuple(shape)} but"
                f" {like_name}{where} has {tuple(b.shape)}: {name} do not match {like_name}"
            )
        check_float_array(f"{name}{where}", a)

    walk(tree, like, "")


def _same_tree(a, b) -> bool:
    """Whether ``a`` has the structure and shapes of ``b`` and real floating-point arrays."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(b, tuple):
        return (
            isinstance(a, tuple) and len(a) == len(b) and all(map(_same_tree, a, b))
        )
    dtype = getattr(a, "dtype", None)
    return (
        dtype is not None
        and tuple(a.shape) == tuple(b.shape)
        and _REAL_FLOATING.get((type(dtype), dtype), False)
    )


def check_float_tree(name: str, tree) -> None:
    """A TypeError naming the first array of ``tree`` that is not real floating point."""
    leaves = tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name} hold no arrays")
    for field, value in leaves:
        check_float_array(f"{name}.{field}", value)


def check_adam_state(state, params, size: int) -> None:
    """Adam's state: m and v of shape (P,), P = ``size`` (the entries of params), and t ≥ 0."""
    if not all(hasattr(state, f) for f in ("m", "v", "step")):
        raise TypeError(
            f"state must be the AdamState of adam_init(params), got {type(state).__name__}"
        )
    for field in ("m", "v"):
        shape = getattr(getattr(state, field), "shape", None)
        if shape is None or tuple(shape) != (size,):
            raise ValueError(
                f"state.{field} has shape {shape} but params hold {size} numbers: the state"
                " belongs to other parameters (adam_init(params) makes a matching one)"
            )
    check_seed(state.step, "state.step")


def check_sgd_state(state, params, momentum: float) -> None:
    """SGD's state: a velocity shaped like ``params`` when momentum > 0."""
    velocity = getattr(state, "velocity", state)
    if momentum == 0.0:
        return
    if velocity is None:
        raise ValueError("sgd_step: momentum > 0 needs a state from sgd_init(params, momentum)")
    check_same_tree("state.velocity", velocity, "params", params)


def check_optimizer_settings(settings, names: tuple, schedules: tuple) -> None:
    """Every field of ``train.OptimizerSettings``, each error naming its field."""
    s, prefix = settings, "OptimizerSettings."
    if s.name not in names:
        raise ValueError(f"{prefix}name must be one of {names}, got {s.name!r}")
    if s.schedule not in schedules:
        raise ValueError(f"{prefix}schedule must be one of {schedules}, got {s.schedule!r}")
    check_positive_float(prefix + "lr", s.lr)
    check_fraction(prefix + "beta1", s.beta1)
    check_fraction(prefix + "beta2", s.beta2)
    check_positive_float(prefix + "eps", s.eps)
    check_fraction(prefix + "momentum", s.momentum)
    if not _is_integer(s.warmup_steps) or s.warmup_steps < 0:
        raise ValueError(f"{prefix}warmup_steps must be an int ≥ 0, got {s.warmup_steps!r}")
    if not _is_real(s.final_lr_fraction) or not 0.0 <= s.final_lr_fraction <= 1.0:
        raise ValueError(
            f"{prefix}final_lr_fraction must be in [0, 1], got {s.final_lr_fraction!r}"
        )


# -- files ---------------------------------------------------------------------------------


def check_writable_file(path, name: str = "path") -> str:
    """``path`` as a string, or a ValueError naming ``name`` unless a file can be written
    there: not a directory, in an existing directory we may write to, and, if the file
    exists, one we may replace. Nothing is created."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{name} must be a file path, got {type(path).__name__}") from None
    if os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is a directory, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{name} {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path!r}: the directory {directory!r} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{name} {path!r} exists and is not writable")
    return path
