"""Argument checks for the public entry points, all in one module.

The layer functions (linear, attention, LayerNorm, MLP, block) hold only the mathematics
and trust their inputs (TransformerConfig refuses an unknown attention or activation, so
the layers never see one). The functions a user calls check their arguments here first:

    forward, predict        check_params, check_tokens, check_patches, check_bool,
                            quiet_checked_pass, check_forward_finite
    backward                check_dout, check_bool
    query_loss              check_query_loss
    implicit_update         check_params, check_prompt, removed_positions
    remove_tokens           check_context_query, removed_positions
    minimum_norm_solution, null_space_perturbation, linear_attention_context_vector
                            check_minimum_norm_inputs, check_null_space_inputs,
                            check_linear_attention_inputs
    implicit_update_every_position, implicit_update_from_last_token, at_position,
    position_alignment      check_params, check_tokens, check_bool,
                            check_position_updates, check_position
    thought_patch, compression_error
                            check_thought_inputs, check_rtol, check_n_calibration
    implicit_path, factorised_path
                            check_params, check_single_block, check_prompt,
                            check_prefix_method, check_states_finite; their methods
                            check_index, check_path_weights
    prefix_states           check_prefix_inputs (check_block_params, check_context_query),
                            check_prefix_method
    von_oswald_*            check_von_oswald, check_von_oswald_tokens, check_float_dtype,
                            check_namespace, check_theta0, check_result_finite
    sgd_*, adam_*, unflatten
                            check_learning_rate, check_fraction, check_positive_float,
                            check_same_tree, check_adam_state, check_sgd_state,
                            check_flat_vector
    init_params, data       check_config, check_model_size, check_seed, check_generator,
                            check_positive_int, check_device,
                            check_non_negative, check_float_dtype, check_namespace,
                            check_batch, check_batch_finite, check_prompt_parts,
                            check_result_finite, check_theta0, check_prediction_finite;
                            RegressionBatch's properties check_batch_tokens
    train, train_setup      the data checks, check_params, check_token_width,
                            check_callback, check_optimizer_settings (OptimizerSettings
                            on creation), check_training_setup (TrainingSetup on creation),
                            check_record_dict (TrainingSetup.from_dict)
    save_checkpoint, the command line
                            check_writable_file
    relative_residual       check_same_shape
    θ_0, the figures' curves, linattn's eigenvalues
                            host_real_array (small host arrays of real numbers)

Every check raises a ValueError or a TypeError (TypeError for an argument of the wrong
kind: an integer or complex dtype, an int where a sequence is needed, a string where a
bool is needed) whose message names the argument and says what is wrong. Shapes, dtypes
and record types are free to check. The values of an array are read back from its
device one boolean at a time, and never in a training step: by
:func:`check_forward_finite` (the tokens and the output of ``forward``),
:func:`check_prompt` (the context and query of the theorems),
:func:`check_states_finite` (the query's states along Proposition 3.1's paths), and the
checks of three small theorem functions (minimum norm, null space, linear attention's
closed form), and :func:`check_batch_finite` (the least-squares and ridge baselines).
The causes of a failure are looked for only after it. ``backward`` and
the optimisers read no values: NaN in a gradient propagates, and training catches it in
the losses it reads.

docs/validation.md lists what each entry point validates.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
from collections.abc import Iterator, Mapping

import numpy

from .backend import Array, device, namespace, resolve_dtype, resolve_namespace, tree_leaves
from .config import TransformerConfig
from .params import AttentionParams, BlockParams, LayerNormParams, MLPParams, ModelParams
from .rnn import RNNParams

# -- numbers ---------------------------------------------------------------------------


def _shape(a) -> tuple | None:
    """``a``'s shape as a tuple of ints, or None for something that is not an array."""
    shape = getattr(a, "shape", None)
    return None if shape is None else tuple(shape)


def _shape_text(shape) -> str:
    """A shape for a message: the tuple, or None with what to do about it (a list or
    another value without a shape was passed where an array belongs)."""
    if shape is None:
        return "None: not an array (numpy.asarray makes one of a list)"
    return str(shape)


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


def check_non_negative_int(name: str, value) -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an int ≥ 0."""
    if not _is_integer(value) or value < 0:
        raise ValueError(f"{name} must be an int ≥ 0, got {value!r}")
    return int(value)


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` as an int, or a ValueError naming ``name`` unless it is an int ≥ 0."""
    return check_non_negative_int(name, seed)


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


def check_bool(name: str, value) -> bool:
    """``value`` as a bool, or a TypeError naming ``name`` unless it is True or False (a
    string such as "no" or an int such as 2 would silently count as True)."""
    if not isinstance(value, (bool, numpy.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_record_dict(name: str, values, fields, required=()) -> dict:
    """``values`` as a new dict, or an error naming ``name``: a TypeError unless it is a
    mapping (a dict read back from JSON, say), a ValueError naming every key of
    ``required`` that is missing and every key that is not one of ``fields``."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{name} must be a dict of fields, got {type(values).__name__}")
    missing = [key for key in required if key not in values]
    unknown = sorted(str(key) for key in values if key not in fields)
    if missing or unknown:
        problems = ([f"missing {missing}"] if missing else []) + (
            [f"unknown {unknown}"] if unknown else [])
        raise ValueError(
            f"{name}: {' and '.join(problems)} keys; its fields are {list(fields)}"
        )
    return dict(values)


# -- dtypes and namespaces ---------------------------------------------------------------

_REAL_FLOATING: dict = {}  # (type, dtype) -> bool, filled on first sight


def is_real_floating(dtype, xp=None) -> bool:
    """Whether ``dtype`` is float32 or float64, in any namespace: the precisions the
    package computes in (float16 keeps about three significant digits, too few for its
    checks; extended precision is not an array-API dtype)."""
    key = (type(dtype), dtype)  # the type first: dtypes of two libraries never compared
    known = _REAL_FLOATING.get(key)
    if known is None:
        kind = getattr(dtype, "kind", None)  # NumPy and CuPy dtypes
        if kind is not None:
            known = kind == "f" and getattr(dtype, "itemsize", 0) in (4, 8)
        else:
            try:
                known = bool(xp.isdtype(dtype, "real floating")) and dtype in (
                    xp.float32, xp.float64)
            except Exception:  # noqa: BLE001 - not a dtype this namespace knows
                return False
        _REAL_FLOATING[key] = known
    return known


def _dtype_problem(dtype) -> str:
    """Why a dtype is refused, in words."""
    name = str(dtype)
    if getattr(dtype, "kind", None) in ("U", "S", "O"):
        return "text and Python objects are not numbers"
    if "int" in name:
        return "integers would truncate every value"
    if "complex" in name:
        return "complex numbers are not a model input"
    if "bool" in name:
        return "booleans are not numbers"
    if "float16" in name:
        return "float16 keeps about three significant digits, too few for any check here"
    if "float" in name or "longdouble" in name:
        return "extended precision is not an array-API type; use float64"
    return "it is not a real floating-point type"


def check_float_array(name: str, a) -> None:
    """A TypeError naming ``name`` unless ``a`` is an array of real floating point."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or not hasattr(a, "shape"):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if _REAL_FLOATING.get((type(dtype), dtype)):  # seen before: no namespace look-up
        return
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


def check_device(xp, device, name: str = "device"):
    """``device`` if it is a device of the namespace ``xp`` (None: the namespace's default);
    a ValueError naming ``name`` otherwise. Tried on an empty array: nothing is allocated
    (NumPy knows only "cpu"; CuPy takes a GPU's number or ``cupy.cuda.Device``)."""
    if device is None:
        return None
    try:
        xp.empty((0,), device=device)
    except Exception as error:  # noqa: BLE001 - each library refuses a device its own way
        library = getattr(xp, "__name__", type(xp).__name__)
        raise ValueError(f"{name} {device!r} is not a device of {library}: {error}") from None
    return device


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


def _host_memory() -> int | None:
    """The machine's physical memory in bytes, where the system says (None elsewhere)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_model_size(config: TransformerConfig, name: str = "config") -> int:
    """The number of parameters ``config`` describes, or a ValueError naming ``name`` if
    they would not fit in the machine's memory as the float64 numbers they are drawn as:
    init_params would otherwise allocate block after block until the memory runs out (a
    single impossible array is NumPy's MemoryError at once; many possible ones are not)."""
    shapes = _expected_shapes(config)
    contextual = (("W_in", "W_s", "b", "W_out") if config.contextual_layer == "rnn"
                  else ("W_Q", "W_K", "W_V", "W_O"))
    fields = contextual + ("W1", "b1", "W2", "b2") + (
        ("gain", "bias", "gain", "bias") if config.layer_norm else ())
    count = config.n_blocks * sum(math.prod(shapes[field][0]) for field in fields)
    memory = _host_memory()
    if memory is not None and 8 * count > memory:
        raise ValueError(
            f"{name} describes {count:.3g} parameters ({8 * count / 2**30:.3g} GiB as float64),"
            f" more than this machine's memory ({memory / 2**30:.3g} GiB): reduce n_blocks,"
            " d_mlp, d_token, n_heads·d_head or d_state"
        )
    return count


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
        first, first_name = _check_block(block, config, expected, contextual, name, l,
                                         first, first_name)


def check_block_params(block_params, config: TransformerConfig, name: str = "block_params"):
    """A ValueError naming the parameter unless ``block_params`` is one BlockParams of
    the shapes ``config`` gives a block (as in :func:`check_params`: real floating point,
    one dtype and one array type, else a TypeError); a TypeError unless it is a
    BlockParams (a whole ModelParams is named: pass one of its blocks)."""
    check_config(config)
    if not isinstance(block_params, BlockParams):
        raise TypeError(
            f"{name} must be a BlockParams (one entry of params.blocks), got"
            f" {type(block_params).__name__}"
            + ("; pass params.blocks[0]" if isinstance(block_params, ModelParams) else "")
        )
    contextual = RNNParams if config.contextual_layer == "rnn" else AttentionParams
    _check_block(block_params, config, _expected_shapes(config), contextual, name, None,
                 None, None)


def _check_block(block, config, expected, contextual, name, l, first, first_name):
    """The checks of one block for :func:`check_params` (block ``l`` of ``name``) and
    :func:`check_block_params` (l None: the block is ``name``). ``first`` is the first
    array seen (the others must share its type and dtype), returned with its name."""
    if not isinstance(block, BlockParams):
        where, _ = _block_names(name, l)
        raise ValueError(f"{where} must be a BlockParams, got {type(block).__name__}")
    for part, record, kind in (
        ("attn", block.attn, contextual),
        ("mlp", block.mlp, MLPParams),
        ("ln1", block.ln1, LayerNormParams),
        ("ln2", block.ln2, LayerNormParams),
    ):
        if kind is LayerNormParams:
            if (record is not None) != config.layer_norm:
                where, label = _block_names(name, l)
                raise ValueError(
                    f"{label}{part} is {'set' if record is not None else 'None'} but"
                    f" config.layer_norm = {config.layer_norm} ({where}.{part})"
                )
            if record is None:
                continue
        if not isinstance(record, kind):
            where, _ = _block_names(name, l)
            raise ValueError(
                f"{where}.{part} must be a {kind.__name__},"
                f" got {type(record).__name__}"
                + (f" (config.contextual_layer = {config.contextual_layer!r})"
                   if part == "attn" else "")
            )
        for field, value in zip(record._fields, record):
            shape = _shape(value)
            want, formula = expected[field]
            if shape != want:
                where, label = _block_names(name, l)
                label_field = f"{part}.{field}" if kind is LayerNormParams else field
                raise ValueError(
                    f"{label}{label_field} has shape {shape},"
                    f" config expects {want} = {formula} ({where}.{part}.{field})"
                )
            if first is None:
                first_name = f"{_block_names(name, l)[0]}.{part}.{field}"
                check_float_array(first_name, value)
                first = value
            elif type(value) is not type(first):
                where, _ = _block_names(name, l)
                raise TypeError(
                    f"{where}.{part}.{field} is a {type(value).__name__} but"
                    f" {first_name} is a {type(first).__name__}: move all"
                    " parameters with to_device"
                )
            elif value.dtype != first.dtype:
                where, _ = _block_names(name, l)
                check_float_array(f"{where}.{part}.{field}", value)
                raise TypeError(
                    f"{where}.{part}.{field} has dtype {value.dtype} but the other"
                    f" parameters have {first.dtype}: use one dtype for all parameters"
                )
    return first, first_name


def _block_names(name: str, l) -> tuple[str, str]:
    """(where, label) of a block in messages: ("params.blocks[l]", "block l: "), or
    (name, "") for a block passed on its own (l None). Built on the error path only."""
    return (name, "") if l is None else (f"{name}.blocks[{l}]", f"block {l}: ")


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
    shape = _shape(tokens)
    if shape is None or len(shape) != 3:
        raise ValueError(
            f"{name} must have shape (B, T, d_token), got shape {_shape_text(shape)}"
        )
    if shape[-1] != config.d_token:
        raise ValueError(f"{name} have width {shape[-1]} but config.d_token = {config.d_token}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"{name} must hold at least one prompt of one token, got shape {shape}"
        )
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
            shape = _shape(value)
            if shape != expected:
                raise ValueError(
                    f"patch for block {l}: {field} has shape"
                    f" {shape}, expected {expected}"
                    f" (one per prompt: tokens hold {B} prompts) ({name}[{l}].{field})"
                )
            check_float_array(f"{name}[{l}].{field}", value)


def _non_finite(xp, a):
    """A 0-d boolean: whether ``a`` holds NaN or ±inf."""
    return ~xp.all(xp.isfinite(a))


def _raise_first_non_finite(xp, named) -> None:
    """A ValueError naming the first of the (name, array) pairs that holds NaN or ±inf."""
    for name, a in named:
        if bool(_non_finite(xp, a)):
            raise ValueError(f"{name} contains NaN or infinity")


def _float_pair(name_a: str, a, name_b: str, b) -> None:
    """Both arrays real floating point, and of one dtype (no silent promotion)."""
    check_float_array(name_a, a)
    check_float_array(name_b, b)
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} ({a.dtype}) and {name_b} ({b.dtype}) must share a dtype")


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


def quiet_checked_pass(check_finite: bool):
    """The context ``forward`` runs its blocks in. When the result is checked afterwards
    (``check_finite``), NumPy's overflow, invalid-value and divide-by-zero warnings are
    silenced: :func:`check_forward_finite` raises a ValueError naming the cause (bad
    tokens, a bad parameter, an overflow in block l) where they would have been printed
    before it. ``numpy.errstate`` only sets a flag of the host's NumPy (which also
    computes array_api_strict's arrays): no array is read and no device synchronises;
    CuPy prints no such warnings. Without the check nothing changes: the warnings are
    then the only sign of an overflow."""
    if check_finite:
        return numpy.errstate(over="ignore", invalid="ignore", divide="ignore")
    return contextlib.nullcontext()


def _layernorm_overflowed(xp, cache):
    """A 0-d boolean: whether a LayerNorm of this block's cache had an infinite variance
    (rstd = 1/√(σ² + eps) = 0), which maps its input to 0 and leaves the output finite
    but wrong; None for a block without LayerNorm."""
    flag = None
    for ln in (getattr(cache, "ln1", None), getattr(cache, "ln2", None)):
        if ln is not None:
            zero = xp.any(ln.rstd == 0)
            flag = zero if flag is None else flag | zero
    return flag


def check_forward_finite(
    tokens: Array, out: Array, params, patches, inputs=(), caches=()
) -> None:
    """One device-to-host read: tokens and output finite, tokens free of subnormal numbers,
    and no LayerNorm variance overflowed (``caches``: each block's cache).

    Only when that fails are the causes looked for, each named: NaN or infinity in the
    tokens, subnormal tokens, a non-finite parameter or patch, and otherwise an overflow
    inside the forward pass (``inputs``: each block's input, to name the block).
    """
    xp = namespace(tokens, out)
    bad = _non_finite(xp, tokens) | _non_finite(xp, out) | _subnormal(xp, tokens)
    layernorm = [_layernorm_overflowed(xp, cache) for cache in caches]
    for flag in layernorm:
        if flag is not None:
            bad = bad | flag
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
    sizes, culprit = _overflow_sizes(xp, (("tokens", tokens),), params, patches)
    for l, flag in enumerate(layernorm[: block + 1]):
        if flag is not None and bool(flag):
            raise ValueError(
                f"the forward pass overflowed {tokens.dtype} in block {l}: {sizes}, but a"
                " LayerNorm's variance overflowed to infinity, which maps its input to 0: the"
                " output would be finite and wrong." + _rescale_advice(culprit, tokens.dtype)
            )
    raise ValueError(
        f"the forward pass overflowed {tokens.dtype} in block {block}: {sizes}, but the"
        " block's output holds infinity or NaN." + _rescale_advice(culprit, tokens.dtype)
    )


def _overflow_sizes(xp, tokens, params, patches=None) -> tuple[str, str]:
    """(words, culprit) after a pass over finite inputs overflowed: the largest |entry| of
    the tokens (``(name, array)`` pairs), of the parameters and of the patches, in words
    ("the tokens are finite (largest |entry| 2.71), and so are the parameters (largest
    |entry| 1.2e+200)"), and the one whose entries are largest, the one to rescale:
    parameters of 1e200 overflow a pass on tokens of normal size. Error path only (one
    number read per array)."""

    def largest(arrays) -> float:
        return max((float(xp.max(xp.abs(a))) for a in arrays
                    if hasattr(a, "shape") and math.prod(a.shape) > 0), default=0.0)

    sizes = [(f"the {' and '.join(name for name, _ in tokens)}", largest(a for _, a in tokens)),
             ("the parameters", largest(a for _, a in tree_leaves(params)))]
    if patches is not None and tree_leaves(patches):
        sizes.append(("the patches", largest(a for _, a in tree_leaves(patches))))
    words = f"{sizes[0][0]} are finite (largest |entry| {sizes[0][1]:.3g})" + "".join(
        f", and so are {name} (largest |entry| {value:.3g})" for name, value in sizes[1:])
    return words, max(sizes, key=lambda pair: pair[1])[0]


def _rescale_advice(culprit: str, dtype) -> str:
    """" Rescale <culprit>", and in float32 " or use float64"."""
    return f" Rescale {culprit}" + (" or use float64" if "64" not in str(dtype) else "")


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
    shape = _shape(dout)
    if shape != expected:
        raise ValueError(
            f"{name} must have the shape of forward's output, {expected}"
            f"{' (last_only)' if cache.last_only else ''}, got shape"
            f" {_shape_text(shape)}"
        )
    check_float_array(name, dout)
    _same_array_type(name, dout, "the forward pass's arrays", inputs[0])


# -- the theorems ------------------------------------------------------------------------


def check_context_query(context: Array, query: Array, D: int | None = None) -> None:
    """Shapes and dtypes only (no values read): context a (B, N, D) array with B ≥ 1 and
    query a (B, D) array, both real floating point of one dtype and array type; D is
    config.d_token when given, else the context's width."""
    c_shape = _shape(context)
    q_shape = _shape(query)
    width = "d_token" if D is None else f"d_token={D}"
    if c_shape is None or len(c_shape) != 3 or c_shape[0] < 1 or c_shape[-1] < 1 or (
        D is not None and c_shape[-1] != D
    ):
        raise ValueError(
            f"context must have shape (B, N, {width}) with B ≥ 1, got shape"
            f" {_shape_text(c_shape)}"
        )
    D = c_shape[-1]
    if q_shape is None or len(q_shape) != 2 or q_shape[-1] != D:
        raise ValueError(
            f"query must have shape (B, d_token={D}), got shape"
            f" {_shape_text(q_shape)}"
        )
    if q_shape[0] != c_shape[0]:
        raise ValueError(
            f"query holds {q_shape[0]} prompts but context holds {c_shape[0]}: one query per prompt"
        )
    _float_pair("context", context, "query", query)
    _same_array_type("query", query, "context", context)


def check_prompt(config: TransformerConfig, context: Array, query: Array) -> None:
    """Raise naming the argument unless context is a (B, N, D) array and query a (B, D)
    array (D = config.d_token, B ≥ 1), both real floating point of one dtype, finite and
    free of subnormal numbers (one device-to-host read)."""
    check_config(config)
    check_context_query(context, query, config.d_token)
    xp = namespace(context, query)
    bad = (
        _non_finite(xp, context) | _non_finite(xp, query)
        | _subnormal(xp, context) | _subnormal(xp, query)
    )
    if not bool(bad):
        return
    _raise_first_non_finite(xp, (("context", context), ("query", query)))
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
    if isinstance(removed, Mapping):
        raise TypeError(
            f"removed must be a list of context positions, got a {type(removed).__name__}:"
            " pass list(...) of the positions"
        )
    if isinstance(removed, Iterator):
        raise TypeError(
            f"removed must be a list of context positions, not an iterator"
            f" ({type(removed).__name__}): an iterator is used up by one pass; pass list(...)"
        )
    if getattr(removed, "ndim", 1) != 1:
        raise ValueError(f"removed must be one-dimensional, got shape {removed.shape}")
    if getattr(getattr(removed, "dtype", None), "kind", None) == "b":
        raise TypeError(
            "removed must list context positions, got a boolean mask: pass the positions"
            " where it is True, numpy.flatnonzero(mask)"
        )
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


def check_prefix_method(method, methods: tuple) -> str:
    """``method``, or a ValueError unless it is one of ``methods`` (how ``prefix_states``
    computes the query's states after each prefix: dynamics.PREFIX_METHODS)."""
    if not isinstance(method, str) or method not in methods:
        raise ValueError(f"method (the prefix method) must be one of {methods}, got {method!r}")
    return method


def check_prefix_inputs(block_params, config: TransformerConfig, context: Array,
                        query: Array) -> None:
    """``prefix_states``' arguments: block_params one BlockParams of the shapes ``config``
    gives a block (:func:`check_block_params`), context (B, N, D) and query (B, D) with
    D = config.d_token (:func:`check_context_query`), all real floating point, the prompt
    the same array type on the same device as the parameters. Reads no values."""
    check_block_params(block_params, config)
    check_context_query(context, query, config.d_token)
    _same_array_type("context", context, "block_params", block_params.mlp.W1)


def check_index(i, low: int, high: int, what: str) -> int:
    """``i`` as an int, or a ValueError unless it is an int in [low, high]."""
    try:
        j = None if isinstance(i, bool) else operator.index(i)
    except TypeError:
        j = None
    if j is None or not low <= j <= high:
        raise ValueError(f"{what} index must be an int in [{low}, {high}], got {i!r}")
    return j


def check_result_finite(result: Array, what: str) -> Array:
    """``result``, or a ValueError saying that ``what`` overflowed (one device-to-host
    read): finite inputs whose result is not finite, as products of huge numbers or a
    division by a tiny one give."""
    xp = namespace(result)
    if bool(_non_finite(xp, result)):
        raise ValueError(
            f"{what}: the result overflowed {result.dtype} (infinity or NaN) although the"
            " inputs are finite. Rescale the inputs"
        )
    return result


def check_states_finite(states: Array, what: str, params=None, context=None,
                        query=None) -> None:
    """A ValueError saying the forward pass overflowed if ``states`` hold NaN or infinity
    (one device-to-host read): the prefix states of Proposition 3.1's paths. On failure
    only, the sizes of the (finite) context, query and ``params`` are read to say which
    to rescale."""
    xp = namespace(states)
    if bool(_non_finite(xp, states)):
        tokens = tuple((name, a) for name, a in (("context", context), ("query", query))
                       if a is not None)
        sizes, culprit = (_overflow_sizes(xp, tokens, params) if tokens
                          else ("the context and query are finite", "the tokens"))
        raise ValueError(
            f"{what}: the forward pass overflowed {states.dtype}: the query's states hold"
            f" infinity or NaN although {sizes}." + _rescale_advice(culprit, states.dtype)
        )


def check_path_weights(W, W0, n_prompts: int, name: str = "W") -> None:
    """``ImplicitPath.loss``'s weights: W of shape (M, D) like W_0, or (B, M, D) one per
    prompt, real floating point of W_0's array type (shapes and dtypes only)."""
    M, D = tuple(W0.shape)
    shape = _shape(W)
    if shape not in ((M, D), (n_prompts, M, D)):
        raise ValueError(
            f"{name} must have shape (M, D) = {(M, D)} or (B, M, D) = {(n_prompts, M, D)},"
            f" got {type(W).__name__ if shape is None else 'shape'}"
            f" {'' if shape is None else shape}".rstrip()
        )
    check_float_array(name, W)
    _same_array_type(name, W, "the path's weights", W0)


def check_token_width(config: TransformerConfig, d: int) -> None:
    """A ValueError unless regression prompts in dimension d fit: config.d_token = d + 1."""
    d = check_positive_int("d", d)
    if config.d_token != d + 1:
        raise ValueError(
            f"prompts in dimension d = {d} need config.d_token = {d + 1}, got {config.d_token}"
        )


def check_minimum_norm_inputs(column: Array, u_without: Array) -> None:
    """``minimum_norm_solution``'s arguments: column = W δ (B, M) and u_without = a (B, D),
    B, M, D ≥ 1, real floating point of one dtype and array type, finite, and a ≠ 0 for
    every prompt (X a = W δ has no solution for a = 0 and W δ ≠ 0). One device read."""
    c_shape = _shape(column)
    a_shape = _shape(u_without)
    if c_shape is None or len(c_shape) != 2 or min(c_shape) < 1:
        raise ValueError(
            f"column must have shape (B, M) with B, M ≥ 1 (W δ per prompt), got shape"
            f" {_shape_text(c_shape)}"
        )
    if a_shape is None or len(a_shape) != 2 or a_shape[1] < 1 or a_shape[0] != c_shape[0]:
        raise ValueError(
            f"u_without must have shape (B, D) with the column's B = {c_shape[0]}, got shape"
            f" {_shape_text(a_shape)}"
        )
    _float_pair("column", column, "u_without", u_without)
    _same_array_type("u_without", u_without, "column", column)
    xp = namespace(column, u_without)
    zero = xp.all(u_without == 0, axis=-1)  # (B,)
    if not bool(_non_finite(xp, column) | _non_finite(xp, u_without) | xp.any(zero)):
        return
    _raise_first_non_finite(xp, (("column", column), ("u_without", u_without)))
    prompts = [b for b in range(zero.shape[0]) if bool(zero[b])]
    raise ValueError(
        f"u_without is the zero vector for prompt(s) {prompts}: X a = W δ has no solution"
        " for a = 0 (Theorem 2.2 assumes a ≠ 0)"
    )


_UPDATE_FIELDS = ("delta_W", "delta_b", "column", "row", "delta_u", "u_without")


def _is_update(record) -> bool:
    return getattr(record, "_fields", None) == _UPDATE_FIELDS


def check_null_space_inputs(update, perturbation: Array) -> None:
    """``null_space_perturbation``'s arguments: an ImplicitUpdate (delta_W (..., M, D),
    row and u_without (..., D)) and Z of shape (M, D) or delta_W's shape, real floating
    point of the update's array type, finite (one device read)."""
    if not _is_update(update):
        raise TypeError(
            f"update must be an ImplicitUpdate (from implicit_update), got {type(update).__name__}"
        )
    delta_W = update.delta_W
    shape = _shape(delta_W)
    if shape is None or len(shape) < 3:
        raise ValueError(
            f"update.delta_W must have shape (B, M, D) (or (B, T, M, D)), got"
            f" {_shape_text(shape)}"
        )
    M, D = shape[-2], shape[-1]
    for field in ("row", "u_without"):  # the rank-1 factors the projection uses
        if _shape(getattr(update, field)) != shape[:-2] + (D,):
            raise ValueError(
                f"update.{field} must have shape {shape[:-2] + (D,)} (delta_W's {shape}), got"
                f" {_shape_text(_shape(getattr(update, field)))}"
            )
    allowed = ((M, D), shape)
    z_shape = _shape(perturbation)
    if z_shape not in allowed:
        raise ValueError(
            f"perturbation must have shape (M, D) = {(M, D)} or delta_W's shape {shape}, got"
            f" shape {z_shape}"
        )
    check_float_array("perturbation", perturbation)
    _same_array_type("perturbation", perturbation, "the update's arrays", delta_W)
    xp = namespace(perturbation)
    if bool(_non_finite(xp, perturbation)):
        raise ValueError("perturbation contains NaN or infinity")


def check_linear_attention_inputs(
    attn_params, n_heads, context_tokens: Array, query_token: Array
) -> int:
    """``linear_attention_context_vector``'s arguments; returns n_heads as an int.

    attn_params an AttentionParams with W_Q, W_K, W_V (H·K, D) and W_O (D, H·K);
    n_heads an int ≥ 1 dividing H·K; context_tokens (B, |Y|, D) (|Y| = 0 allowed: δA = 0)
    and query_token (B, D), real floating point of one dtype and the parameters' array
    type, finite (one device read).
    """
    if not isinstance(attn_params, AttentionParams):
        raise TypeError(
            f"attn_params must be an AttentionParams (params.blocks[l].attn), got"
            f" {type(attn_params).__name__}"
        )
    W_Q = attn_params.W_Q
    q_shape = _shape(W_Q)
    if q_shape is None or len(q_shape) != 2:
        raise ValueError(
            f"attn_params.W_Q must have shape (H·K, D), got shape {_shape_text(q_shape)}"
        )
    HK, D = q_shape
    for field in ("W_K", "W_V", "W_O"):
        value = getattr(attn_params, field)
        want = (D, HK) if field == "W_O" else (HK, D)
        shape = _shape(value)
        if shape != want:
            raise ValueError(
                f"attn_params.{field} has shape {shape},"
                f" W_Q's shape {(HK, D)} needs {want}"
            )
    for field, value in zip(attn_params._fields, attn_params):
        check_float_array(f"attn_params.{field}", value)
    if not _is_integer(n_heads) or n_heads < 1 or HK % n_heads:
        raise ValueError(
            f"n_heads must be a positive int dividing n_heads·d_head = {HK}, got {n_heads!r}"
        )
    c_shape = _shape(context_tokens)
    if c_shape is None or len(c_shape) != 3 or c_shape[0] < 1 or c_shape[-1] != D:
        raise ValueError(
            f"context_tokens must have shape (B, |Y|, d_token={D}) with B ≥ 1, got shape"
            f" {_shape_text(c_shape)}"
        )
    q = _shape(query_token)
    if q != (c_shape[0], D):
        raise ValueError(
            f"query_token must have shape (B, d_token) = {(c_shape[0], D)}, got shape"
            f" {_shape_text(q)}"
        )
    _float_pair("context_tokens", context_tokens, "query_token", query_token)
    _same_array_type("context_tokens", context_tokens, "attn_params", W_Q)
    _same_array_type("query_token", query_token, "attn_params", W_Q)
    xp = namespace(context_tokens, query_token)
    if bool(_non_finite(xp, context_tokens) | _non_finite(xp, query_token)):
        _raise_first_non_finite(
            xp, (("context_tokens", context_tokens), ("query_token", query_token)))
    return int(n_heads)


# -- every position as a query; the thought patch -------------------------------------------


def check_position_updates(updates, name: str = "updates") -> int:
    """What ``implicit_update_every_position`` returns: a non-empty tuple (or list) of
    ImplicitUpdate whose arrays carry a position axis (delta_W (B, T, M, D), column
    (B, T, M), delta_b, row, delta_u and u_without (B, T, D)), one B and T for all
    blocks. Returns T."""
    if not isinstance(updates, (tuple, list)) or not updates or not all(
        _is_update(u) for u in updates
    ):
        raise TypeError(
            f"{name} must be the tuple of ImplicitUpdate (one per block) that"
            f" implicit_update_every_position returns, got {type(updates).__name__}"
        )
    first = updates[0].delta_W
    if getattr(first, "ndim", None) != 4:
        raise ValueError(
            f"{name} carry no position axis: delta_W has shape"
            f" {tuple(getattr(first, 'shape', ()))}, expected (B, T, M, D) from"
            " implicit_update_every_position"
        )
    B, T = first.shape[:2]
    for l, update in enumerate(updates):
        shape = getattr(update.delta_W, "shape", None)
        if shape is None or len(shape) != 4 or tuple(shape[:2]) != (B, T):
            raise ValueError(
                f"{name}[{l}].delta_W has shape {shape},"
                f" expected (B, T, M, D) with B = {B} prompts and T = {T} positions, as {name}[0]"
            )
        M, D = shape[2:]
        for field, want in (("delta_b", (B, T, D)), ("column", (B, T, M)), ("row", (B, T, D)),
                            ("delta_u", (B, T, D)), ("u_without", (B, T, D))):
            value = getattr(update, field)
            shape = _shape(value)
            if shape is None:
                raise ValueError(
                    f"{name}[{l}].{field} is {type(value).__name__}, expected an array of shape"
                    f" {want} as implicit_update_every_position returns"
                )
            if shape != want:
                raise ValueError(
                    f"{name}[{l}].{field} has shape {shape},"
                    f" expected {want}"
                )
    return T


def check_position(t, T: int, name: str = "t") -> int:
    """``t`` as an int: a Python or NumPy integer with 0 ≤ t < T (TypeError otherwise)."""
    if not _is_integer(t):
        raise TypeError(f"{name} must be an int position, got {type(t).__name__}")
    if not 0 <= t < T:
        raise ValueError(f"{name} must satisfy 0 ≤ {name} < T = {T}, got {t}")
    return int(t)


def check_thought_inputs(params, config, context: Array, queries: Array, name: str) -> None:
    """``thought_patch`` and ``compression_error``: params of a one-block model, context
    (B, N, D) and queries (B, K, D) with one B and dtype, N, K ≥ 1 (finite values are
    checked by the forward passes)."""
    check_params(params, config)
    if config.n_blocks != 1:
        raise ValueError(
            f"thought_patch fits one block's MLP, but config.n_blocks = {config.n_blocks}: in a"
            " stack a later block's input for a query alone depends on how well the earlier"
            " fitted patches reproduce their outputs, which they do not exactly. Use a"
            " one-block model, or implicit_update for exact per-query patches of a stack"
        )
    check_tokens(context, config, params, name="context")
    check_tokens(queries, config, params, name=name)
    if queries.shape[0] != context.shape[0]:
        raise ValueError(
            f"{name} hold {queries.shape[0]} prompts but context holds {context.shape[0]}:"
            f" {name} must have shape (B, K, d_token) with the context's B"
        )
    if queries.dtype != context.dtype:
        raise TypeError(
            f"context ({context.dtype}) and {name} ({queries.dtype}) must share a dtype"
        )


def check_rtol(rtol, name: str = "rtol") -> float | None:
    """None (the default cutoff) or a finite float ≥ 0: the relative cutoff of a pseudo-inverse."""
    if rtol is None:
        return None
    return check_non_negative(name, rtol)


def check_n_calibration(n_calibration, K_max: int) -> tuple[int, ...]:
    """The K values of ``compression_error``: a non-empty collection of ints in [1, K_max]."""
    if isinstance(n_calibration, (str, bytes)) or not hasattr(n_calibration, "__iter__"):
        raise TypeError(
            f"n_calibration must be a list of ints (the K values), got"
            f" {type(n_calibration).__name__} {n_calibration!r}"
            + (f"; for one K write n_calibration=[{n_calibration!r}]"
               if _is_integer(n_calibration) else "")
        )
    Ks = tuple(n_calibration)
    if not Ks:
        raise ValueError("n_calibration must hold at least one K, got none")
    for K in Ks:
        if not _is_integer(K) or not 1 <= K <= K_max:
            raise ValueError(
                f"n_calibration entries must be ints in [1, {K_max}] (the calibration queries"
                f" given), got {K!r}: calibration_queries hold {K_max} queries per prompt, so"
                f" pass n_calibration with entries ≤ {K_max} (the default goes up to 25)"
            )
    return tuple(int(K) for K in Ks)


# -- von Oswald et al. (2023) ------------------------------------------------------------


def check_step_size(eta, name: str = "eta") -> float:
    """The step size η of one gradient step as a float: finite and ≥ 0. η < 0 would step
    up the loss; η = 0 is no step (θ_1 = θ_0), the left end of a sweep over η."""
    if not _is_real(eta) or not math.isfinite(eta) or eta < 0:
        raise ValueError(
            f"{name} must be a finite float ≥ 0 (a gradient step size), got {eta!r}"
        )
    return float(eta)


def host_real_array(name: str, values) -> numpy.ndarray:
    """``values`` (a list, a NumPy array of floats or ints) as a float64 NumPy array, or an
    error naming ``name``: a ValueError for a ragged list, a TypeError for complex numbers
    (their imaginary part would be dropped), booleans, text or Python objects. For the
    small host arrays of the figures and the closed forms; shapes are the caller's."""
    try:
        array = numpy.asarray(values)
    except (TypeError, ValueError):  # a ragged list, say
        raise ValueError(
            f"{name} must be an array of numbers, got a {type(values).__name__} that is not"
            " rectangular"
        ) from None
    if array.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must hold real numbers, got dtype {array.dtype}: {_dtype_problem(array.dtype)}"
        )
    return array.astype(numpy.float64)


def check_theta0(theta0, d: int) -> numpy.ndarray:
    """θ_0, the initial weights of explicit gradient descent, as a host (1, d) float64 row:
    None (θ_0 = 0), or d finite real numbers of shape (d,) or (1, d) (a list, a NumPy
    array of floats or ints, an array of another library). A TypeError for complex
    numbers (their imaginary part would be dropped), booleans, text or objects."""
    if theta0 is None:
        return numpy.zeros((1, d))
    if hasattr(theta0, "shape") and hasattr(theta0, "dtype") and not isinstance(
        theta0, (numpy.ndarray, numpy.generic)
    ):
        from .backend import to_device  # an array of another library, brought to the host

        theta0 = to_device(theta0, "numpy")
    values = host_real_array("theta0", theta0)  # the initial weights θ_0
    if values.shape not in ((d,), (1, d)):
        raise ValueError(f"theta0 must have shape ({d},) or (1, {d}), got {values.shape}")
    if not numpy.all(numpy.isfinite(values)):
        raise ValueError("theta0 contains NaN or infinity")
    return values.reshape(1, d)


def check_prediction_finite(prediction: Array, batch, what: str) -> Array:
    """``prediction``, or a ValueError (one device-to-host read): the tokens' NaN or
    infinity if that is the cause (read after the failure only), else an overflow of
    finite inputs, naming what to rescale."""
    xp = namespace(prediction)
    if bool(_non_finite(xp, prediction)):
        check_batch_finite(batch)
        raise ValueError(
            f"{what}: the prediction overflowed {prediction.dtype} (infinity or NaN) although"
            " the tokens are finite. Rescale the tokens, eta or theta0"
        )
    return prediction


def check_von_oswald(d, eta, n_context) -> tuple[int, float, int]:
    """(d, eta, n_context) as (int, float, int): d, n_context ints ≥ 1 and the step size
    η finite and ≥ 0 (:func:`check_step_size`)."""
    d = check_positive_int("d", d)
    n_context = check_positive_int("n_context", n_context)
    return d, check_step_size(eta), n_context


def check_von_oswald_tokens(tokens: Array) -> None:
    """``von_oswald_predict``'s tokens: (B, N+1, d+1) with B, N, d ≥ 1, real floating point."""
    shape = _shape(tokens)
    if shape is None or len(shape) != 3 or shape[0] < 1 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(
            "tokens must have shape (B, N+1, d+1) with B ≥ 1, N ≥ 1 and d ≥ 1, got shape"
            f" {_shape_text(shape)}"
        )
    check_float_array("tokens", tokens)


# -- optimisers ---------------------------------------------------------------------------


def check_same_tree(name: str, tree, like_name: str, like) -> None:
    """A ValueError naming the first difference unless ``tree`` has the records, the
    None entries and the array shapes of ``like``; a TypeError unless its arrays are real
    floating point of ``like``'s dtypes (the gradients or the velocity given to an
    optimiser with its params: float64 gradients would turn float32 parameters into
    float64 ones)."""
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
        if _shape(b) is None:
            raise TypeError(
                f"{like_name}{where} must be an array (or a record of arrays), got"
                f" {type(b).__name__}"
            )
        shape = _shape(a)
        if shape != tuple(b.shape):
            raise ValueError(
                f"{name}{where} has shape {shape} but"
                f" {like_name}{where} has {tuple(b.shape)}: {name} do not match {like_name}"
            )
        check_float_array(f"{name}{where}", a)
        if a.dtype != b.dtype:
            raise TypeError(
                f"{name}{where} has dtype {a.dtype} but {like_name}{where} has {b.dtype}: the"
                f" step would turn {like_name} into {a.dtype}; give {name} the dtype of"
                f" {like_name}"
            )

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
        and _shape(a) == _shape(b) is not None
        and _REAL_FLOATING.get((type(dtype), dtype), False)
        and dtype == b.dtype
    )


def check_float_tree(name: str, tree) -> None:
    """A TypeError naming the first array of ``tree`` that is not real floating point."""
    leaves = tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{name} hold no arrays")
    for field, value in leaves:
        check_float_array(f"{name}.{field}" if field else name, value)


def check_adam_state(state, params, size: int, dtype=None) -> None:
    """Adam's state: m and v of shape (P,), P = ``size`` (the entries of params), of the
    params' ``dtype`` when given (a float64 state turns float32 parameters into float64
    ones), and t ≥ 0."""
    if not all(hasattr(state, f) for f in ("m", "v", "step")):
        raise TypeError(
            f"state must be the AdamState of adam_init(params), got {type(state).__name__}"
        )
    for field in ("m", "v"):
        shape = getattr(getattr(state, field), "shape", None)
        if shape != (size,):
            raise ValueError(
                f"state.{field} has shape {shape} but params hold {size} numbers: the state"
                " belongs to other parameters (adam_init(params) makes a matching one)"
            )
        check_float_array(f"state.{field}", getattr(state, field))
        if dtype is not None and getattr(state, field).dtype != dtype:
            raise TypeError(
                f"state.{field} has dtype {getattr(state, field).dtype} but params have"
                f" {dtype}: the step would turn the parameters into"
                f" {getattr(state, field).dtype}; adam_init(params) makes a matching state"
            )
    check_seed(state.step, "state.step")


def check_sgd_state(state, params, momentum: float) -> None:
    """SGD's state: the SGDState of ``sgd_init(params, momentum)`` (or of ``sgd_step``),
    whose velocity is shaped like ``params`` when momentum > 0 and None when momentum = 0
    (a velocity would silently be dropped); None stands for that empty state. A TypeError
    for anything else (a bare tree of arrays, a string)."""
    if state is not None and getattr(state, "_fields", None) != ("velocity",):
        raise TypeError(
            "state must be the SGDState of sgd_init(params, momentum) (None without"
            f" momentum), got {type(state).__name__}"
        )
    velocity = None if state is None else state.velocity
    if momentum == 0.0:
        if velocity is not None:
            raise ValueError(
                "sgd_step: state holds a velocity (from sgd_init with momentum > 0) but"
                " momentum = 0 would drop it: pass the momentum the state was made with, or"
                " sgd_init(params) for plain SGD"
            )
        return
    if velocity is None:
        raise ValueError("sgd_step: momentum > 0 needs a state from sgd_init(params, momentum)")
    check_same_tree("state.velocity", velocity, "params", params)


def check_callback(callback, name: str = "callback"):
    """``callback``, or a TypeError naming ``name`` unless it is None or callable (an int
    or a string would fail only when the first report is made, without naming it)."""
    if callback is not None and not callable(callback):
        raise TypeError(
            f"{name} must be None or a function taking a Report, got"
            f" {type(callback).__name__} {callback!r}"
        )
    return callback


def check_training_setup(setup, optimizer_type: type) -> dict:
    """Every field of ``train.TrainingSetup``, each error naming its field: config a
    TransformerConfig, optimizer an ``optimizer_type`` (OptimizerSettings), steps,
    batch_size, n_context, val_every and val_size positive ints, d a positive int with
    config.d_token = d + 1, noise finite ≥ 0. Returns the numbers as Python ints and
    floats (NumPy scalars are not JSON)."""
    prefix = "TrainingSetup."
    check_config(setup.config, prefix + "config")
    if not isinstance(setup.optimizer, optimizer_type):
        raise TypeError(
            f"{prefix}optimizer must be an OptimizerSettings, got"
            f" {type(setup.optimizer).__name__}"
        )
    values = {field: check_positive_int(prefix + field, getattr(setup, field))
              for field in ("steps", "batch_size", "n_context", "d", "val_every", "val_size")}
    if setup.config.d_token != setup.d + 1:
        raise ValueError(
            f"{prefix}d = {setup.d}: prompts in dimension d need config.d_token = d + 1 ="
            f" {setup.d + 1}, got {setup.config.d_token}"
        )
    return {**values, "noise": check_non_negative(prefix + "noise", setup.noise)}


def check_optimizer_settings(settings, names: tuple, schedules: tuple) -> dict:
    """Every field of ``train.OptimizerSettings``, each error naming its field. Returns the
    numbers as Python ints and floats (a NumPy scalar in the record would make its
    ``to_dict`` fail as JSON when a checkpoint stores it)."""
    s, prefix = settings, "OptimizerSettings."
    if s.name not in names:
        raise ValueError(f"{prefix}name must be one of {names}, got {s.name!r}")
    if s.schedule not in schedules:
        raise ValueError(f"{prefix}schedule must be one of {schedules}, got {s.schedule!r}")
    values = {
        "lr": check_positive_float(prefix + "lr", s.lr),
        "beta1": check_fraction(prefix + "beta1", s.beta1),
        "beta2": check_fraction(prefix + "beta2", s.beta2),
        "eps": check_positive_float(prefix + "eps", s.eps),
        "momentum": check_fraction(prefix + "momentum", s.momentum),
    }
    if not _is_integer(s.warmup_steps) or s.warmup_steps < 0:
        raise ValueError(f"{prefix}warmup_steps must be an int ≥ 0, got {s.warmup_steps!r}")
    if not _is_real(s.final_lr_fraction) or not 0.0 <= s.final_lr_fraction <= 1.0:
        raise ValueError(
            f"{prefix}final_lr_fraction must be in [0, 1], got {s.final_lr_fraction!r}"
        )
    return {**values, "warmup_steps": int(s.warmup_steps),
            "final_lr_fraction": float(s.final_lr_fraction)}


# -- data ------------------------------------------------------------------------------------


def check_batch(batch, name: str = "batch") -> None:
    """A RegressionBatch: tokens (B, N+1, d+1) with B, N, d ≥ 1 and target (B,), real
    floating point (shapes and dtypes only)."""
    tokens = getattr(batch, "tokens", None)
    target = getattr(batch, "target", None)
    # context_x looked up on the class: the property would index tokens that may be a list
    if tokens is None or target is None or not hasattr(type(batch), "context_x"):
        raise TypeError(
            f"{name} must be a RegressionBatch (from regression_prompts), got"
            f" {type(batch).__name__}"
        )
    shape = check_batch_tokens(tokens, name)
    if shape[0] < 1 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(
            f"{name}.tokens must have shape (B, N+1, d+1) with B, N, d ≥ 1, got shape"
            f" {_shape_text(shape)}"
        )
    check_float_array(f"{name}.tokens", tokens)
    t_shape = _shape(target)
    if t_shape != (shape[0],):
        raise ValueError(
            f"{name}.target must have shape (B,) = ({shape[0]},), got"
            f" {t_shape}" + (f" ({type(target).__name__})" if t_shape is None else "")
        )
    check_float_array(f"{name}.target", target)
    _same_array_type(f"{name}.target", target, f"{name}.tokens", tokens)


def check_batch_tokens(tokens, name: str = "batch") -> tuple:
    """The shape of ``{name}.tokens``, or a ValueError naming it unless it is an array
    (numpy.ndarray or another array-API array) with three axes (B, N+1, d+1): the check
    of RegressionBatch's properties, which slice the tokens (a list of lists would fail
    inside the indexing). Shapes only; :func:`check_batch` checks the rest."""
    shape = getattr(tokens, "shape", None)
    if shape is not None and len(shape) == 3:
        return tuple(shape)
    if shape is None:
        raise ValueError(
            f"{name}.tokens must be an array of shape (B, N+1, d+1), got"
            f" {type(tokens).__name__} (no shape): make the batch with regression_prompts,"
            " or its fields with numpy.asarray"
        )
    raise ValueError(
        f"{name}.tokens must have shape (B, N+1, d+1) with B, N, d ≥ 1, got shape"
        f" {tuple(shape)}"
    )


def check_batch_finite(batch, name: str = "batch") -> None:
    """A ValueError unless ``batch.tokens`` are finite (one device-to-host read): the
    linear-algebra baselines would otherwise fail inside LAPACK (an SVD that does not
    converge on NaN) or return NaN. Call after :func:`check_batch`."""
    xp = namespace(batch.tokens)
    if bool(_non_finite(xp, batch.tokens)):
        raise ValueError(f"{name}.tokens contain NaN or infinity")


def check_prompt_parts(context_x, context_y, query_x, query_y=None) -> None:
    """``prompt_tokens``' parts: context_x (B, N, d), context_y (B, N), query_x (B, d),
    query_y None or (B,), all real floating point of one array type."""
    shape = _shape(context_x)
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"prompt_tokens: context_x must have shape (B, N, d) with B, N, d ≥ 1, got shape"
            f" {_shape_text(shape)}"
        )
    B, N, d = shape
    parts = [("context_y", context_y, (B, N)), ("query_x", query_x, (B, d))]
    if query_y is not None:
        parts.append(("query_y", query_y, (B,)))
    for name, a, want in parts:
        got = _shape(a)
        if got != want:
            raise ValueError(
                f"prompt_tokens: context_x {shape} needs {name} of shape {want}, got"
                f" {got}"
            )
    check_float_array("context_x", context_x)
    for name, a, _ in parts:
        check_float_array(name, a)
        _same_array_type(name, a, "context_x", context_x)



def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    """Two arrays whose shapes broadcast to a non-empty one (``relative_residual``'s a, b)."""
    for name, x in ((name_a, a), (name_b, b)):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}")
        kind = getattr(x.dtype, "kind", None)  # NumPy and CuPy; other libraries: isdtype
        numeric = kind in tuple("iufc") if kind is not None else bool(
            namespace(x).isdtype(x.dtype, "numeric"))
        if not numeric:
            raise TypeError(f"{name} must be an array of numbers, got dtype {x.dtype}:"
                            f" {_dtype_problem(x.dtype)}")
    try:
        shape = numpy.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    except ValueError:
        raise ValueError(
            f"{name_a} and {name_b} must have one shape (or broadcast to one), got"
            f" {tuple(a.shape)} and {tuple(b.shape)}"
        ) from None
    if math.prod(shape) == 0:
        raise ValueError(f"{name_a} and {name_b} are empty (shape {shape}): nothing to compare")


# -- the loss --------------------------------------------------------------------------------


def check_query_loss(out: Array, target: Array) -> None:
    """``query_loss``'s arguments: out (B, Tq, D) with B, Tq, D ≥ 1 and target (B,), real
    floating point, one array type. Shapes and dtypes only: no value is read (training's
    hot path; the training loop checks the losses it reads)."""
    shape = _shape(out)
    if shape is None or len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            "query_loss: out must have shape (B, Tq, D) with B, Tq, D ≥ 1 (forward's output),"
            f" got {_shape_text(shape)}"
        )
    t_shape = _shape(target)
    if t_shape != (shape[0],):
        raise ValueError(
            f"query_loss: target must have shape (B,) = ({shape[0]},), got"
            f" {_shape_text(t_shape)}"
        )
    check_float_array("out", out)
    check_float_array("target", target)
    _same_array_type("target", target, "out", out)


def check_flat_vector(vector, size: int) -> None:
    """``unflatten``'s vector: an array of shape (size,), the number of entries of the tree."""
    shape = _shape(vector)
    if shape is None or len(shape) != 1:
        raise ValueError(
            f"unflatten: vector must be a one-dimensional array, got"
            f" {type(vector).__name__} of shape {shape}"
        )
    if shape[0] != size:
        raise ValueError(f"unflatten: vector has {shape[0]} entries, the tree needs {size}")


# -- files ---------------------------------------------------------------------------------


def check_writable_file(path, name: str = "path") -> str:
    """``path`` as a string, or a ValueError naming ``name`` unless a file can be written
    there: not empty, no NUL character, not a directory (nor a name ending in "/"), in an
    existing directory we may write to, and, if the file exists, a regular file (not a
    device such as /dev/null) we may replace. Nothing is created. A directory may still
    refuse new files where it looks writable (/proc, for root): the write names that."""
    try:
        path = os.fsdecode(os.fspath(path))  # bytes as the file system encodes them
    except TypeError:
        raise TypeError(f"{name} must be a file path, got {type(path).__name__}") from None
    if not path:
        raise ValueError(f"{name} is empty: give a file path")
    if "\0" in os.fsdecode(path):
        raise ValueError(f"{name} {path!r} contains a NUL character, which no file name holds")
    if os.path.isdir(path):
        raise ValueError(f"{name} {path!r} is a directory, not a file")
    if os.fsdecode(path).endswith(("/", os.sep)):
        raise ValueError(f"{name} {path!r} ends with a separator: it names a directory, not a file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"{name} {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"{name} {path!r}: the directory {directory!r} is not writable")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(
            f"{name} {path!r} exists and is not a regular file (a device, a pipe or a socket):"
            " a file written there would replace it"
        )
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{name} {path!r} exists and is not writable")
    return path
