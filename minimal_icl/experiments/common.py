"""What every experiment shares: statistics, the output folder, JSON and PNG writing, progress.

The experiments run on the host in NumPy: they call the package's model, theorems and
training, then summarise the results (means, standard errors, fitted slopes) and write
one ``NAME.png`` and one ``NAME.json`` per figure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy

from ..backend import Array, namespace
from ..validation import (
    _is_integer,
    check_bool,
    host_real_array,
    check_non_negative,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)


class ExperimentError(ValueError):
    """A problem with an experiment's arguments or output folder, said in one line."""


# -- arguments ---------------------------------------------------------------------------


def check_seed(seed) -> int:
    """The seed as an int ≥ 0, or an ExperimentError naming the bad value."""
    if isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer)) or seed < 0:
        raise ExperimentError(f"seed must be an integer ≥ 0, got {seed!r}")
    return int(seed)


def check_progress(progress) -> None:
    """A TypeError unless ``progress`` is a :class:`Progress` (its first update would be
    an AttributeError)."""
    if not isinstance(progress, Progress):
        raise TypeError(
            "progress must be a minimal_icl.experiments.Progress (Progress(quiet=True) for"
            f" none), got {type(progress).__name__}"
        )


def check_config_record(record, non_negative: tuple[str, ...] = ()) -> None:
    """Every field of a figure's config record, checked by the kind of its default, with a
    ValueError or TypeError naming Record.field: an int field a positive int (an int ≥ 0
    for the fields named in ``non_negative``), a float field a finite float > 0 (≥ 0 for
    those named), a bool field True or False, a tuple field a non-empty tuple (or list)
    of such numbers. Called on creation by each record (IdentityConfig(grid_half=0) divided by
    zero in the figure; grid_limit = −1 or 2.5 grid points ran and drew nonsense)."""
    def check(name: str, like, value, zero_allowed: bool) -> None:
        if isinstance(like, bool):
            check_bool(name, value)
        elif isinstance(like, int):
            (check_non_negative_int if zero_allowed else check_positive_int)(name, value)
        elif isinstance(like, float):
            (check_non_negative if zero_allowed else check_positive_float)(name, value)

    for field in dataclasses.fields(record):
        name = f"{type(record).__name__}.{field.name}"
        value, like = getattr(record, field.name), field.default
        zero_allowed = field.name in non_negative
        if isinstance(like, tuple):
            if not isinstance(value, (tuple, list)):
                raise TypeError(f"{name} must be a tuple of numbers, got {type(value).__name__}")
            if not value:
                raise ValueError(f"{name} is empty: give at least one value")
            for i, entry in enumerate(value):
                check(f"{name}[{i}]", like[0], entry, zero_allowed)
        else:
            check(name, like, value, zero_allowed)


def check_out_dir(out, name: str = "out") -> Path:
    """``out`` as a Path, or a TypeError naming ``name`` unless it is a path; an empty
    string (which Path reads as the current folder) or a NUL character is an
    ExperimentError."""
    try:
        path = Path(out)
    except TypeError:
        raise TypeError(f"{name} must be a folder path, got {type(out).__name__}") from None
    if os.fspath(out) == "":
        raise ExperimentError(f"{name} is empty: give a folder path ('.' for the current folder)")
    if "\0" in str(path):
        raise ExperimentError(
            f"{name} {str(path)!r} contains a NUL character, which no folder name holds"
        )
    return path


def prepare_out_dir(out) -> Path:
    """Create the output folder if needed and check that files can be written in it."""
    path = check_out_dir(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ExperimentError(f"cannot write to output folder {str(path)!r}: {reason}") from None
    return path


def task_rng(seed: int, name: str) -> numpy.random.Generator:
    """A random stream per (seed, purpose), seeded by (seed, CRC-32 of ``name``): independent
    of the training stream (seeded by ``SeedSequence(seed).spawn``), so held-out tasks are
    not training prompts, and each figure draws its own."""
    if not isinstance(name, str):
        raise TypeError(f"task_rng: name must be a str (the purpose), got {type(name).__name__}")
    return numpy.random.default_rng([check_seed(seed), zlib.crc32(name.encode())])


# -- statistics --------------------------------------------------------------------------


def mean_se(values, axis: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Mean and standard error of the mean over ``axis``: se = std(ddof=1) / √n.

    Needs at least two samples along ``axis`` (one sample has no standard error).
    """
    values = _real_array("mean_se", "values", values)
    if values.ndim == 0:
        raise ExperimentError("mean_se needs at least 2 samples, got one number")
    if not _is_integer(axis) or not -values.ndim <= axis < values.ndim:
        raise ExperimentError(
            f"mean_se: axis must be an int in [{-values.ndim}, {values.ndim}) for values of"
            f" shape {values.shape}, got {axis!r}"
        )
    n = values.shape[axis]
    if n < 2:
        raise ExperimentError(f"mean_se needs at least 2 samples, got {n}")
    mean = numpy.mean(values, axis=axis)
    se = numpy.std(values, axis=axis, ddof=1) / math.sqrt(n)
    return mean, se


def loglog_slope(x, y) -> float:
    """Slope of the least-squares line through (log x, log y): y ≈ c · x^slope."""
    x = _real_array("loglog_slope", "x", x)
    y = _real_array("loglog_slope", "y", y)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ExperimentError(f"loglog_slope needs two 1-d arrays of equal length ≥ 2, got {x.shape}, {y.shape}")
    if not (numpy.all(x > 0) and numpy.all(y > 0)):
        raise ExperimentError("loglog_slope needs positive x and y (a log-log fit)")
    if not (numpy.all(numpy.isfinite(x)) and numpy.all(numpy.isfinite(y))):
        raise ExperimentError("loglog_slope needs finite x and y, got infinity")
    if numpy.all(x == x[0]):
        raise ExperimentError(f"loglog_slope needs at least two distinct x, got all {x[0]!r}")
    slope, _ = numpy.polyfit(numpy.log(x), numpy.log(y), 1)
    return float(slope)


def cos_frobenius(A: Array, B: Array) -> Array:
    """cos_F(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F), ⟨A, B⟩_F = trace(Aᵀ B), per leading index.

    A, B: (..., m, n) real, finite, of shapes that broadcast. Returns (...). A zero matrix
    has no direction: ValueError. Matrices whose squared norm exceeds the largest float
    are measured after dividing each by its largest entry (cos_F does not depend on scale).
    """
    _check_matrices(A, B)
    xp = namespace(A, B)
    with numpy.errstate(over="ignore", invalid="ignore"):  # an overflow is redone below
        inner = xp.sum(A * B, axis=(-2, -1))
        norm_A = xp.sqrt(xp.sum(A * A, axis=(-2, -1)))
        norm_B = xp.sqrt(xp.sum(B * B, axis=(-2, -1)))
    if bool(xp.any(norm_A == 0)) or bool(xp.any(norm_B == 0)):
        raise ValueError("cos_frobenius: a zero matrix has no direction (its Frobenius norm is 0)")
    if not (bool(xp.all(xp.isfinite(norm_A))) and bool(xp.all(xp.isfinite(norm_B)))):
        A = A / xp.max(xp.abs(A), axis=(-2, -1), keepdims=True)
        B = B / xp.max(xp.abs(B), axis=(-2, -1), keepdims=True)
        return cos_frobenius(A, B)
    return inner / (norm_A * norm_B)


def _real_array(function: str, name: str, values) -> numpy.ndarray:
    """``values`` as a float64 host array, or an error naming ``function: name``
    (:func:`minimal_icl.validation.host_real_array`)."""
    return host_real_array(f"{function}: {name}", values)


def _check_matrices(A, B) -> None:
    """cos_frobenius's arguments: arrays of real, finite (m, n) matrices whose shapes
    broadcast (a ValueError or TypeError naming A or B)."""
    shapes = []
    for name, X in (("A", A), ("B", B)):
        shape = getattr(X, "shape", None)
        if shape is None or len(shape) < 2:
            raise ValueError(f"cos_frobenius: {name} must be an array of matrices (..., m, n),"
                             f" got {type(X).__name__ if shape is None else tuple(shape)}")
        kind = getattr(X.dtype, "kind", None)  # NumPy and CuPy; other libraries: isdtype
        real = kind in tuple("iuf") if kind is not None else bool(
            namespace(X).isdtype(X.dtype, ("real floating", "integral")))
        if not real:  # complex: ⟨A, B⟩ would need a conjugate
            raise TypeError(f"cos_frobenius: {name} must hold real numbers, got dtype {X.dtype}")
        if not bool(namespace(X).all(namespace(X).isfinite(X))):
            raise ValueError(f"cos_frobenius: {name} contains NaN or infinity")
        shapes.append(tuple(shape))
    try:
        numpy.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"cos_frobenius: A {shapes[0]} and B {shapes[1]} must have one shape"
                         " (or shapes that broadcast)") from None


def heldout_table(table: dict) -> dict:
    """``train.compare_with_baselines``'s rows with short, stable keys (model, zero,
    one_step_gd, least_squares, and ridge with label noise):

        {"mse": {name: MSE}, "se": {name: its standard error},
         "excess": {name: mean of (its squared error − the model's), same prompts},
         "excess_se": {name: standard error of that paired difference}}
    """
    if not isinstance(table, dict) or not all(
            hasattr(row, "mse") and hasattr(row, "excess") for row in table.values()):
        raise TypeError(f"heldout_table: table must be the dict of rows that"
                        f" compare_with_baselines returns, got {type(table).__name__}")
    keys = (("trained model", "model"), ("zero", "zero"), ("one step of GD", "one_step_gd"),
            ("least squares", "least_squares"), ("ridge", "ridge"))
    out = {"mse": {}, "se": {}, "excess": {}, "excess_se": {}}
    for name, row in table.items():
        short = next((k for prefix, k in keys if name.startswith(prefix)), name)
        out["mse"][short], out["se"][short] = row.mse, row.stderr
        out["excess"][short], out["excess_se"][short] = row.excess, row.excess_stderr
    return out


# -- files -------------------------------------------------------------------------------


def _plain(value):
    """Turn NumPy arrays and scalars inside ``value`` into JSON-ready Python objects."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, numpy.ndarray):
        return _plain(value.tolist())
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path, record: dict) -> Path:
    """Write ``record`` as indented JSON, atomically (temp file in the folder, then rename).

    NaN and infinity are refused (they are not JSON): a figure never plots them.
    """
    path = Path(path)
    text = json.dumps(_plain(record), indent=1, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a result file is not
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def moving_average(values, window: int, max_points: int = 1000) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(steps, averages): the mean over each ``window`` consecutive values, ending at
    step = 1-based index, thinned to at most ``max_points`` points for plotting. A window
    longer than the values is shortened to their number."""
    values = _real_array("moving_average", "values", values)
    if values.ndim != 1 or values.shape[0] < 1:
        raise ExperimentError(f"moving_average: values must be a non-empty 1-d array, got"
                              f" shape {values.shape}")
    for name, value in (("window", window), ("max_points", max_points)):
        if not _is_integer(value) or value < 1:
            raise ExperimentError(f"moving_average: {name} must be a positive int, got {value!r}")
    window = min(int(window), values.shape[0])
    smoothed = numpy.convolve(values, numpy.ones(window) / window, mode="valid")
    steps = numpy.arange(window, values.shape[0] + 1)
    stride = max(1, -(-smoothed.shape[0] // max_points))
    keep = numpy.arange(smoothed.shape[0] - 1, -1, -stride)[::-1]  # always keep the last
    return steps[keep], smoothed[keep]


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def new_figure(n_panels: int, width: float = 4.6, height: float = 3.6, n_rows: int = 1):
    """``n_panels`` axes in ``n_rows`` rows, Agg backend (no display, no LaTeX: mathtext).

    Returns (figure, flat list of axes); ``width`` and ``height`` are per panel (inches).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10.5, "legend.fontsize": 8.5})
    n_cols = -(-n_panels // n_rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows),
                             squeeze=False)
    return fig, [ax for row in axes for ax in row][:n_panels]


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Label a log axis with plain numbers (0.1, 0.2, 1, 2) instead of 2×10⁻¹."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FormatStrFormatter("%g"))
    target.set_minor_formatter(FormatStrFormatter(""))


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG (tight layout, modest dpi so the committed files stay small)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# -- progress ----------------------------------------------------------------------------



def run_experiment(name: str, out_dir, seed: int, fast: bool, progress, load_model, compute,
                   config, plot) -> dict:
    """The steps every figure shares: get the trained model (from its checkpoint in
    ``out_dir`` if it is there), compute the numbers, plot NAME.png, write NAME.json.

    ``load_model(out_dir, seed, fast, progress)`` returns the model, ``compute(model,
    config, seed, progress)`` the record of numbers, ``plot(record, path)`` draws it.
    Returns the record, with ``fast`` and ``seconds`` (training if any, numbers and plot).
    """
    start = time.perf_counter()
    out_dir = prepare_out_dir(out_dir)
    model = load_model(out_dir, seed, fast, progress)
    record = compute(model, config, seed, progress)
    record["fast"] = fast
    progress.update(f"{name}: plotting")
    plot(record, out_dir / f"{name}.png")
    record["seconds"] = time.perf_counter() - start
    write_json(out_dir / f"{name}.json", record)
    return record


class Progress:
    """The live status line of long work: ``[stage] done/total  elapsed``.

    Drawn with ``progress.ProgressLine``, and only where it draws: on a
    terminal, unless ``quiet`` or the environment variable CI is set. quiet is True or
    False ("no" would count as true); stream None (standard error) or a text stream.
    """

    def __init__(self, quiet: bool = False, stream=None):
        from ..progress import ProgressLine, progress_enabled

        quiet = check_bool("quiet", quiet)
        if stream is not None and not (hasattr(stream, "write") and hasattr(stream, "flush")):
            raise TypeError(f"stream must be a text stream (sys.stderr, io.StringIO()), got"
                            f" {type(stream).__name__}")
        self.stream = sys.stderr if stream is None else stream
        self.line = ProgressLine(self.stream, enabled=progress_enabled(self.stream, quiet))
        self.start = time.perf_counter()

    @property
    def enabled(self) -> bool:
        return self.line.enabled

    def update(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        count = "" if done is None else f" {done}/{total}"
        self.line.update(f"[{stage}]{count}  {time.perf_counter() - self.start:6.1f} s")

    def message(self, text: str) -> None:
        """A permanent line (the status line is cleared first); silent when not shown."""
        if self.enabled:
            self.line.clear()
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        self.line.clear()


QUIET = Progress(quiet=True)
