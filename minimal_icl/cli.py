"""The command line: ``python -m minimal_icl COMMAND`` (or the ``minimal-icl`` script).

    python -m minimal_icl train --out results [--seed 0] [--steps N] [--fast] [--quiet]
    python -m minimal_icl figure NAME --out results [--seed 0] [--fast] [--quiet]
    python -m minimal_icl reproduce --out results [--seed 0] [--fast] [--quiet]

Each command is one entry of :data:`COMMANDS`: a help line, a function that adds its
arguments to an ``argparse`` sub-parser, and a function that runs it and returns the
exit status; a new command is one more entry, as ``figure NAME`` and ``reproduce`` are.
Errors the package knows about (a ValueError such as a bad checkpoint, an OSError such
as an unwritable directory) are printed as one line on stderr with exit status 2.
Every file a command writes is checked before any training starts (a directory in the
way, a read-only file or folder), and each command says whether it reused a saved model
or trained one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

from .heap import keep_freed_memory


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def check_outputs(out: str, names) -> dict[str, bool]:
    """Create the folder ``out`` and check that each file ``out/NAME`` can be written,
    before any work starts; returns {name: whether the file exists already}.

    The folder is checked as the figures check it, by writing (and removing) a file in
    it: a folder that takes no new files although it looks writable (/proc, for root)
    is refused here, not by the save after the training."""
    from .experiments.common import prepare_out_dir
    from .validation import check_writable_file

    prepare_out_dir(out)
    existed = {}
    for name in names:
        path = check_writable_file(os.path.join(out, name), "output file")
        existed[name] = os.path.exists(path)
    return existed


def model_note(record: dict, out: str, existed: dict[str, bool], key: str = "model") -> str | None:
    """Whether the figure of ``record`` reused the saved model or trained one, in words.

    ``existed``: which model files were in ``out`` before; updated as models are saved.
    ``key``: the record's entry that describes the model ("deep_model" for a figure's
    second model).
    """
    model = record.get(key)
    if not isinstance(model, dict) or "checkpoint" not in model:
        return None
    name = model["checkpoint"]
    path = os.path.join(out, name)
    before, existed[name] = existed.get(name, False), True
    if model.get("reused_checkpoint"):
        return f"reused the saved model {path} (same training setting and seed)"
    if before:
        return (
            f"trained the model again and replaced {path}: the saved one was trained with"
            " another setting or seed, or lacks a record this figure needs"
        )
    return f"trained the model and saved it to {path}"


MODEL_KEYS = ("model", "deep_model", "rnn_model", "causal_stack_model")  # a record's models


def model_files() -> tuple[str, ...]:
    """The checkpoint files the figures train into the output directory, one per model."""
    from .experiments.models import (
        CAUSAL_STACK_FILE,
        DEEP_MODEL_FILE,
        PAPER_MODEL_FILE,
        RNN_MODEL_FILE,
    )

    return (PAPER_MODEL_FILE, DEEP_MODEL_FILE, RNN_MODEL_FILE, CAUSAL_STACK_FILE)


# -- train -----------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="directory for paper_model.npz (created if needed)"
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the initialisation and the data (default 0)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="training steps (default: the setting's)"
    )
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="300 steps (under a second), for smoke tests (default: --no-fast)",
    )
    parser.add_argument(
        "--quiet",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="print only the final comparison and where the model was saved: no training"
        " log, no progress line (default: --no-quiet)",
    )


def training_log(say: Callable[[str], None], line) -> Callable:
    """The ``callback`` of ``train.train`` for the command line.

    At each held-out measurement: a permanent line (``say``) with the step, the mean
    training loss since the previous measurement, the held-out loss and the time. In
    between: the live ``ProgressLine`` ``line`` with the step, the mean loss of the last
    ``FLUSH_EVERY`` steps and the steps per second.
    """
    import numpy

    from .train import FLUSH_EVERY

    previous = 0  # the step of the previous held-out measurement

    def callback(report) -> None:
        nonlocal previous
        if report.val_loss is not None:
            line.clear()
            mean = numpy.mean(report.train_loss[previous:]) if report.step > 0 else None
            train_text = "      -" if mean is None else f"{mean:7.4f}"
            say(
                f"step {report.step:6d}   train loss {train_text}"
                f"   held-out loss {report.val_loss:7.4f}   {report.wall_time:6.1f} s"
            )
            previous = report.step
        if report.step > 0:
            recent = numpy.mean(report.train_loss[-FLUSH_EVERY:])
            rate = report.step / max(report.wall_time, 1e-12)
            line.update(
                f"step {report.step}/{report.steps}  loss {recent:.4f}"
                f" (mean of the last {min(FLUSH_EVERY, report.step)} steps)  {rate:.0f} steps/s",
                force=report.step == report.steps,
            )

    return callback


def run_train(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .progress import ProgressLine, progress_enabled
    from .train import compare_with_baselines, paper_setting, train_setup

    setup = paper_setting(fast=args.fast)
    if args.steps is not None:
        setup = replace(setup, steps=args.steps, val_every=min(setup.val_every, args.steps))
    path = os.path.join(args.out, "paper_model.npz")
    replacing = check_outputs(args.out, ["paper_model.npz"])["paper_model.npz"]
    c, o = setup.config, setup.optimizer
    say = (lambda *_: None) if args.quiet else print
    if replacing:
        say(f"{path} exists: training a new model, which will replace it")
    say(
        f"training the paper setting: d = {setup.d}, N = {setup.n_context}, one block of {c.attention}"
        f" attention ({c.n_heads} heads of width {c.d_head}) and a {c.activation} MLP of width {c.d_mlp};"
        f" {setup.steps} steps of {setup.batch_size} prompts, {o.name} lr {o.lr:g} ({o.schedule}), seed {args.seed}"
    )

    line = ProgressLine(sys.stderr, enabled=progress_enabled(sys.stderr, args.quiet))
    result = train_setup(setup, seed=args.seed, callback=training_log(say, line))
    line.clear()
    n_test = 2000 if args.fast else 10000
    table = compare_with_baselines(result.params, setup, n_prompts=n_test, seed=args.seed)
    # saved before anything more is printed: a closed pipe (| head) or a terminal that
    # cannot show ± would otherwise lose the trained model
    history = result.history
    save_checkpoint(
        path,
        result.params,
        setup.config,
        extra={f"history/{name}": value for name, value in zip(history._fields, history)},
        metadata={
            "setup": setup.to_dict(),
            "seed": args.seed,
            "held_out": {name: row._asdict() for name, row in table.items()},
        },
    )
    print(f"held-out mean squared error on {n_test} new prompts (± standard error):")
    print(f"  {'':30s} {'MSE':>17s}   {'baseline − model, same prompts':>30s}")
    for name, row in table.items():
        versus = (
            "" if name == "trained model" else f"   {row.excess:+18.4f} ± {row.excess_stderr:.4f}"
        )
        print(f"  {name:30s} {row.mse:8.4f} ± {row.stderr:.4f}{versus}")
    print(f"saved {path}" + (" (replacing the model that was there)" if replacing else ""))
    return 0


# -- figure, reproduce -----------------------------------------------------------------


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        help="directory for the figures, their JSON and the models (created if needed)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the models and the held-out tasks (default 0)",
    )
    parser.add_argument(
        "--fast",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="smoke-test settings: briefly trained models, smaller grids (default: --no-fast)",
    )
    parser.add_argument(
        "--quiet",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="no progress line (default: --no-quiet; it is shown on a terminal only)",
    )


def add_figure_arguments(parser: argparse.ArgumentParser) -> None:
    from .experiments import FIGURES

    parser.add_argument(
        "name", choices=list(FIGURES), metavar="NAME", help=f"one of: {', '.join(FIGURES)}"
    )
    add_experiment_arguments(parser)


def _short(value) -> str:
    """A headline number (or a dict or list of them) with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def run_figure(args: argparse.Namespace) -> int:
    from .experiments import Progress, run_figure

    existed = check_outputs(args.out, [f"{args.name}.png", f"{args.name}.json", *model_files()])
    progress = Progress(quiet=args.quiet)
    try:
        record = run_figure(args.name, args.out, seed=args.seed, fast=args.fast, progress=progress)
    finally:
        progress.close()
    for key in MODEL_KEYS:
        note = model_note(record, args.out, existed, key)
        if note is not None:
            print(note)
    for key, value in record["headline"].items():
        print(f"  {key}: {_short(value)}")
    print(f"wrote {os.path.join(args.out, args.name)}.png and .json ({record['seconds']:.1f} s)")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    from .experiments import Progress, reproduce

    from .experiments import FIGURES

    names = [f"{name}.{ext}" for name in FIGURES for ext in ("png", "json")]
    existed = check_outputs(args.out, ["summary.md", *names, *model_files()])
    progress = Progress(quiet=args.quiet)
    try:
        records = reproduce(args.out, seed=args.seed, fast=args.fast, progress=progress)
    finally:
        progress.close()
    for name, record in records.items():
        for key in MODEL_KEYS:
            note = model_note(record, args.out, existed, key)
            if note is not None:
                print(f"{name}: {note}")
    path = os.path.join(args.out, "summary.md")
    with open(path) as f:
        print(f.read(), end="")
    print(f"wrote the figures and {path}")
    return 0


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train the paper's setting and compare it with the baselines",
        add_arguments=add_train_arguments,
        run=run_train,
    ),
    "figure": Command(
        "compute one figure (PNG + JSON): the paper's Figures 2-5 or one of the further"
        " experiments",
        add_arguments=add_figure_arguments,
        run=run_figure,
    ),
    "reproduce": Command(
        "run every figure (the paper's Figures 2-5 and the further experiments) and write"
        " summary.md",
        add_arguments=add_experiment_arguments,
        run=run_reproduce,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minimal-icl",
        description="minimal_icl: in-context learning as an implicit weight update.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )
    for name, command in COMMANDS.items():
        command.add_arguments(
            subparsers.add_parser(name, help=command.help, description=command.help)
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # freed arrays stay in the heap (minimal_icl.heap)
    for stream in (sys.stdout, sys.stderr):  # ±, η, ≥ on a terminal that cannot show them
        if hasattr(stream, "reconfigure"):  # (PYTHONIOENCODING=ascii): \xb1, not an error
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, OSError) as error:
        print(f"minimal-icl {args.command}: error: {error}", file=sys.stderr)
        return 2
