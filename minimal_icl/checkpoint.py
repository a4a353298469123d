"""Checkpoints: a model's configuration and parameters in one ``.npz`` file, no pickles.

Layout of the file (a NumPy zip archive; every entry a plain numeric or text array):

    format              "minimal_icl.checkpoint/1"                 (0-d unicode array)
    config              the TransformerConfig as JSON text          (0-d unicode array)
    metadata            optional JSON text (settings, seeds, ...)   (0-d unicode array)
    params/<name>       one array per parameter, under its dotted name, e.g.
                        params/blocks.0.mlp.W1
    extra/<name>        optional numeric arrays (a training history, ...)

Saving is atomic: the archive is written to a temporary file in the same directory,
``.NAME.PID.tmp``, flushed and fsync'ed, then moved over the target with ``os.replace``,
so a crash leaves either the old file or the new one, never half of one. A temporary
file left by a save that was killed (its process is gone) is removed by the next save
to the same path. The file is created with mode 0o666 less the umask, like any file a
program writes. The parameters must match the configuration (the file could not be
loaded otherwise), so saving checks them first. Loading always uses
``allow_pickle=False``: a file holding a pickled object is refused, never unpickled.
Every problem with a file read raises :class:`CheckpointError`, which names the file; a
write the operating system refuses raises its OSError, reworded to name the path given.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import NamedTuple

import numpy

from .backend import to_device, tree_leaves, tree_map
from .config import TransformerConfig
from .params import (
    AttentionParams,
    BlockParams,
    LayerNormParams,
    MLPParams,
    ModelParams,
    RNNParams,
)
from .validation import (
    _expected_shapes,
    check_config,
    check_device,
    check_namespace,
    check_params,
    check_writable_file,
    is_real_floating,
)

FORMAT = "minimal_icl.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, incomplete or does not match."""

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` returns."""

    config: TransformerConfig
    params: ModelParams
    extra: dict  # name -> NumPy array
    metadata: dict  # decoded JSON (empty if none was saved)


def _text(value: str) -> numpy.ndarray:
    return numpy.asarray(value, dtype=numpy.str_)  # a 0-d unicode array, not an object


def save_checkpoint(
    path,
    params: ModelParams,
    config: TransformerConfig,
    extra: dict | None = None,
    metadata: dict | None = None,
) -> None:
    """Write ``params`` and ``config`` (and optional ``extra`` arrays and JSON ``metadata``)
    to ``path`` atomically. Arrays are copied to the host; dtypes are kept exactly.

    Raises, before anything is written: ValueError if ``params`` do not match ``config``
    (``validation.check_params``), if ``path`` is a directory or its directory does not
    exist or is not writable, if ``path`` exists and is not a regular file (a device such
    as /dev/null, which the move would replace), if ``metadata`` is not JSON or an
    ``extra`` entry is not a numeric array; TypeError if ``extra`` is not a dict.
    OSError (of the operating system's kind: PermissionError, FileNotFoundError, ...)
    if writing fails all the same (a directory such as /proc that refuses new files even
    where it looks writable, a full disk): its message names ``path`` and the reason, the
    temporary file is removed and an existing file at ``path`` is left unchanged.
    """
    path = check_writable_file(path, "path")
    check_params(params, config)
    if extra is not None and not hasattr(extra, "items"):
        raise TypeError(
            f"save_checkpoint: extra must be a dict of named arrays, got {type(extra).__name__}"
        )
    arrays = {
        "format": _text(FORMAT),
        "config": _text(json.dumps(config.to_dict(), sort_keys=True)),
    }
    if metadata is not None:
        try:
            arrays["metadata"] = _text(json.dumps(metadata, sort_keys=True))
        except (TypeError, ValueError) as error:
            raise ValueError(f"save_checkpoint: metadata must be JSON data ({error})") from None
    for name, value in tree_leaves(to_device(params, "numpy")):
        arrays[f"params/{name}"] = value
    for name, value in (extra or {}).items():
        try:
            value = numpy.asarray(value)
        except ValueError:  # nested lists of unequal lengths
            raise ValueError(
                f"save_checkpoint: extra array {name!r} is ragged (nested sequences of unequal"
                " lengths); only rectangular numeric arrays"
            ) from None
        if value.dtype == object:
            raise ValueError(
                f"save_checkpoint: extra array {name!r} holds Python objects; only numeric arrays"
            )
        if value.dtype.kind not in "biufc":
            raise ValueError(
                f"save_checkpoint: extra array {name!r} has dtype {value.dtype}; only numeric"
                " arrays (text belongs in metadata)"
            )
        arrays[f"extra/{name}"] = value

    temporary = _temporary_path(path)
    step = f"creating the temporary file {os.path.basename(temporary)!r} beside it"
    try:
        _remove_stale_temporaries(path)
        # O_EXCL: never write through a file or link someone else put there; 0o666 & ~umask
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise _cannot_write(path, step, error) from error
    try:
        step = "writing the temporary file"
        with os.fdopen(descriptor, "wb") as handle:
            numpy.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        step = "moving the temporary file over it"
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise _cannot_write(path, step, error) from error
        raise


def _cannot_write(path: str, step: str, error: OSError) -> OSError:
    """``error`` again, of its kind (the same errno, so a PermissionError stays one), with
    a message naming the argument, the reason and the step that failed (the operating
    system's own message names the temporary file, which the caller never chose)."""
    reason = error.strerror or str(error) or type(error).__name__
    message = (
        f"save_checkpoint: cannot write path {path!r}: {reason} ({step}); nothing was"
        " written and an existing file there is unchanged"
    )
    return OSError(error.errno, message) if error.errno is not None else type(error)(message)


def _temporary_path(path: str, pid: int | None = None) -> str:
    """``DIR/.NAME.PID.tmp``: where the save by process ``pid`` writes before the rename."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid() if pid is None else pid}.tmp")


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (so its temporary file is stale)."""
    if pid == os.getpid():
        return True  # our own name: a save of this process that was interrupted
    if os.name != "posix":
        return False  # no safe probe: leave other processes' files alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _remove_stale_temporaries(path: str) -> None:
    """Remove ``DIR/.NAME.PID.tmp`` files of saves to ``path`` whose process is gone."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}."
    for entry in os.listdir(directory):
        middle = entry[len(prefix) : -len(".tmp")]
        if entry.startswith(prefix) and entry.endswith(".tmp") and middle.isdigit():
            if _process_gone(int(middle)):
                try:
                    os.unlink(os.path.join(directory, entry))
                except FileNotFoundError:
                    pass  # another save removed it first


def _read_text(path, archive, key: str) -> str:
    value = archive[key]
    if value.dtype.kind != "U" or value.shape != ():
        raise CheckpointError(
            path, f"entry {key!r} must be a text scalar, got {value.dtype} {value.shape}"
        )
    return str(value[()])


def _block_records(config: TransformerConfig) -> tuple:
    """(part, record type) of one block's parameters, in the order of its fields."""
    contextual = RNNParams if config.contextual_layer == "rnn" else AttentionParams
    norm = LayerNormParams if config.layer_norm else None
    return (("attn", contextual), ("mlp", MLPParams), ("ln1", norm), ("ln2", norm))


def _expected_parameters(path, config: TransformerConfig, n_stored: int) -> dict:
    """{dotted name: shape} of the parameters ``config`` describes, in ``tree_leaves``
    order, computed from the sizes alone (nothing allocated). A CheckpointError if the
    configuration has more blocks than the file has arrays (so the names listed are at
    most 12 times the file's ``n_stored``: a block has 4 attention or recurrent arrays, 4
    MLP arrays and 2 per LayerNorm)."""
    per_block = [(part, record) for part, record in _block_records(config) if record]
    n_per_block = sum(len(record._fields) for _, record in per_block)
    if config.n_blocks > n_stored:
        raise CheckpointError(
            path,
            f"parameters missing: the configuration's {config.n_blocks} blocks need"
            f" {config.n_blocks * n_per_block} parameter arrays, the file holds {n_stored}",
        )
    shapes = _expected_shapes(config)
    return {
        f"blocks.{l}.{part}.{field}": shapes[field][0]
        for l in range(config.n_blocks)
        for part, record in per_block
        for field in record._fields
    }


def _assemble(config: TransformerConfig, array) -> ModelParams:
    """The ModelParams of ``config`` whose parameter of dotted name n is ``array(n)``."""
    blocks = []
    for l in range(config.n_blocks):
        parts = {
            part: None if record is None else record(
                *(array(f"blocks.{l}.{part}.{field}") for field in record._fields))
            for part, record in _block_records(config)
        }
        blocks.append(BlockParams(**parts))
    return ModelParams(blocks=tuple(blocks))


def load_checkpoint(
    path, config: TransformerConfig | None = None, xp=None, device=None
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        config: if given, the file's configuration must equal it.
        xp, device: where to put the parameters (default: NumPy on the host).

    Raises CheckpointError (a ValueError) naming the file and the problem: missing file,
    not a zip/npz archive, truncated, a pickled object inside, a missing or unexpected
    parameter, a wrong shape, a configuration that does not match.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path must be a file path, got {type(path).__name__}") from None
    if config is not None:
        check_config(config)
    # a device alone means NumPy's (where anything but "cpu" is refused, as in init_params)
    xp = None if xp is None and device is None else check_namespace(xp)
    if xp is not None:
        check_device(xp, device)
    if os.path.isdir(path):
        raise CheckpointError(path, "is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise CheckpointError(path, "no such file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "not an .npz (zip) archive, or truncated")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except CheckpointError:
        raise
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise CheckpointError(
                path, "it holds a pickled Python object, which is never loaded"
            ) from None
        raise CheckpointError(path, f"not a readable .npz archive ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise CheckpointError(
            path, f"not a readable .npz archive, perhaps truncated ({error})"
        ) from None

    for key in ("format", "config"):
        if key not in contents:
            raise CheckpointError(path, f"entry {key!r} is missing: not a minimal_icl checkpoint")
    file_format = _read_text(path, contents, "format")
    if file_format != FORMAT:
        raise CheckpointError(path, f"format {file_format!r} is not {FORMAT!r}")
    try:
        stored = TransformerConfig.from_dict(json.loads(_read_text(path, contents, "config")))
    except (ValueError, TypeError) as error:
        raise CheckpointError(path, f"the stored configuration is invalid ({error})") from None
    if config is not None and stored != config:
        stored_fields, wanted = stored.to_dict(), config.to_dict()
        differ = ", ".join(
            f"{name}: file {stored_fields[name]!r} != expected {wanted[name]!r}"
            for name in wanted
            if stored_fields[name] != wanted[name]
        )
        raise CheckpointError(path, f"configuration does not match ({differ})")
    metadata = {}
    if "metadata" in contents:
        text = _read_text(path, contents, "metadata")  # names a non-text entry itself
        try:
            metadata = json.loads(text)
        except ValueError as error:
            raise CheckpointError(path, f"the metadata is not valid JSON ({error})") from None

    # The stored arrays are checked against the names and shapes the configuration gives
    # them before anything is built from it: a configuration with absurd sizes (d_mlp =
    # 10**12, n_blocks = 10**12) is refused by its first mismatch, never allocated.
    stored_names = {key[len("params/") :] for key in contents if key.startswith("params/")}
    expected = _expected_parameters(path, stored, len(stored_names))
    missing = sorted(set(expected) - stored_names)
    unexpected = sorted(stored_names - set(expected))
    if missing:
        raise CheckpointError(path, f"parameters missing: {', '.join(missing)}")
    if unexpected:
        raise CheckpointError(
            path, f"unexpected parameters for this configuration: {', '.join(unexpected)}"
        )
    first_name = next(iter(expected))
    first = contents[f"params/{first_name}"]
    for name, shape in expected.items():
        value = contents[f"params/{name}"]
        if value.shape != shape:
            raise CheckpointError(
                path,
                f"parameter {name} has shape {value.shape}, the configuration needs {shape}",
            )
        if not is_real_floating(value.dtype):
            raise CheckpointError(
                path, f"parameter {name} has dtype {value.dtype}, expected a float dtype"
                " (float32 or float64)"
            )
        if value.dtype != first.dtype:
            raise CheckpointError(
                path, f"parameter {name} has dtype {value.dtype} but {first_name} has"
                f" {first.dtype}: the parameters must share one dtype"
            )

    params = _assemble(stored, lambda name: contents[f"params/{name}"])
    if xp is not None:
        params = tree_map(lambda a: xp.asarray(a, device=device), params)
    extra = {
        key[len("extra/") :]: value for key, value in contents.items() if key.startswith("extra/")
    }
    return Checkpoint(config=stored, params=params, extra=extra, metadata=metadata)
