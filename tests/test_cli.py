"""The command line: ``python -m minimal_icl train`` end to end, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minimal_icl.checkpoint import load_checkpoint
from minimal_icl.cli import COMMANDS, build_parser, main
from minimal_icl.train import paper_setting


def test_train_fast_end_to_end(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["train", "--out", str(out), "--fast", "--seed", "1"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0].startswith("training the paper setting")
    steps = [line for line in lines if line.startswith("step")]
    assert len(steps) == 4 and "held-out loss" in steps[-1]  # steps 0, 100, 200, 300
    assert any("trained model" in line for line in lines)
    for name in ("zero predictor", "one step of GD", "least squares"):
        assert any(name in line for line in lines), name
    assert lines[-1] == f"saved {out / 'paper_model.npz'}"
    assert printed.err == ""  # not a terminal: no progress line

    checkpoint = load_checkpoint(out / "paper_model.npz", config=paper_setting().config)
    assert checkpoint.metadata["seed"] == 1
    assert checkpoint.metadata["setup"]["steps"] == paper_setting(fast=True).steps
    assert checkpoint.extra["history/val_loss"].shape == (4,)
    assert checkpoint.extra["history/val_loss"][-1] < checkpoint.extra["history/val_loss"][0]


def test_quiet_prints_only_the_result(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--fast", "--quiet", "--steps", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith(("step", "training")) for line in lines)
    assert lines[0].startswith("held-out mean squared error") and lines[-1].startswith("saved")


def test_flags_parse_both_ways():
    parser = build_parser()
    args = parser.parse_args(["train", "--out", "x", "--no-fast", "--no-quiet"])
    assert (args.fast, args.quiet, args.seed, args.steps) == (False, False, 0, None)
    args = parser.parse_args(["train", "--out", "x", "--fast", "--quiet", "--steps", "7"])
    assert (args.fast, args.quiet, args.steps) == (True, True, 7)
    assert "train" in COMMANDS


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "x", "--steps", "0"], "--steps"),
        (["train", "--out", "x", "--steps", "many"], "--steps"),
        (["train", "--out", "x", "--seed", "-2"], "--seed"),
        (["train", "--out", "x", "--fast=yes"], "--fast"),
        (["train"], "--out"),
        (["dance"], "dance"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_give_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "error" in err


def test_known_errors_give_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["train", "--out", str(blocker / "sub"), "--fast"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("minimal-icl train: error:")


def _python_dash_m(*args, **env):
    """``python -m minimal_icl *args`` in a fresh process, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "minimal_icl", *args],
        capture_output=True,
        check=False,
        text=True,
        env=dict(os.environ, OPENBLAS_NUM_THREADS="1", **env),
        timeout=120,
    )


def test_python_dash_m_entry_point(tmp_path):
    done = _python_dash_m("train", "--out", str(tmp_path), "--steps", "-1")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "--steps" in done.stderr


# -- every output path is checked before any training; reuse and retraining are said -------


def _blocked(tmp_path, name):
    """An output folder where ``name`` is a directory: a file cannot be written there."""
    out = tmp_path / "results"
    (out / name).mkdir(parents=True)
    return out


def test_train_checks_its_output_before_training(tmp_path, capsys):
    out = _blocked(tmp_path, "paper_model.npz")
    assert main(["train", "--out", str(out), "--steps", "100000"]) == 2  # would take minutes
    printed = capsys.readouterr()
    assert printed.out == ""  # no training line, no step
    assert printed.err.startswith("minimal-icl train: error: output file")
    assert "paper_model.npz' is a directory, not a file" in printed.err


@pytest.mark.parametrize("blocker", ["convergence.png", "convergence.json", "paper_model.npz"])
def test_figure_checks_its_outputs_before_training(tmp_path, capsys, blocker):
    out = _blocked(tmp_path, blocker)
    assert main(["figure", "convergence", "--out", str(out)]) == 2  # the full run: minutes
    printed = capsys.readouterr()
    assert printed.out == "" and f"{blocker}' is a directory, not a file" in printed.err
    assert sorted(os.listdir(out)) == [blocker]  # nothing trained, nothing written


def test_reproduce_checks_its_outputs_before_training(tmp_path, capsys):
    out = _blocked(tmp_path, "summary.md")
    assert main(["reproduce", "--out", str(out)]) == 2
    assert "summary.md' is a directory, not a file" in capsys.readouterr().err


def test_train_says_it_replaces_a_saved_model(tmp_path, capsys):
    (tmp_path / "paper_model.npz").write_bytes(b"an older model")
    assert main(["train", "--out", str(tmp_path), "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    path = tmp_path / "paper_model.npz"
    assert lines[0] == f"{path} exists: training a new model, which will replace it"
    assert lines[-1] == f"saved {path} (replacing the model that was there)"


def test_figure_says_whether_it_trained_retrained_or_reused(tmp_path, capsys):
    path = tmp_path / "paper_model.npz"
    assert main(["train", "--out", str(tmp_path), "--steps", "3", "--quiet"]) == 0
    capsys.readouterr()
    # a model of another setting (3 steps, not the fast setting's 300): trained again
    assert main(["figure", "convergence", "--out", str(tmp_path), "--fast", "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"trained the model again and replaced {path}: the saved one")
    assert main(["figure", "convergence", "--out", str(tmp_path), "--fast", "--quiet"]) == 0
    second = capsys.readouterr().out.splitlines()[0]
    assert second == f"reused the saved model {path} (same training setting and seed)"


def test_model_note_for_a_model_trained_here():
    from minimal_icl.cli import model_note

    record = {"model": {"checkpoint": "deep_model.npz", "reused_checkpoint": False}}
    existed = {"deep_model.npz": False}
    assert model_note(record, "out", existed) == (
        f"trained the model and saved it to {os.path.join('out', 'deep_model.npz')}"
    )
    assert existed == {"deep_model.npz": True}  # the next figure finds it saved
    assert model_note({"headline": {}}, "out", existed) is None


def test_help_texts_match_what_the_commands_do(capsys):
    """--fast's help gives the fast setting's step count, and the figure commands do not
    call every figure one of the paper's (five of them are further experiments)."""
    from minimal_icl.experiments import FIGURES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{paper_setting(fast=True).steps} steps" in text
    assert len(FIGURES) > 4  # Figures 2-5 and more
    for name in ("figure", "reproduce"):
        assert "Figures 2-5" in COMMANDS[name].help and "further" in COMMANDS[name].help


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc")
def test_train_refuses_a_folder_that_takes_no_files_before_training(capsys):
    # /proc looks writable to root, but takes no new files: the save failed after training.
    assert main(["train", "--out", "/proc", "--steps", "100000"]) == 2  # would take minutes
    printed = capsys.readouterr()
    assert printed.out == ""  # no training line, no step
    assert printed.err.startswith("minimal-icl train: error: cannot write to output folder '/proc'")


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--out", "", "--steps", "100000"]) == 2
    assert capsys.readouterr().err.startswith("minimal-icl train: error: out is empty")
    assert os.listdir(tmp_path) == []  # nothing written into the current folder


def test_a_terminal_without_unicode_gets_escapes_and_the_model_is_saved(tmp_path):
    # PYTHONIOENCODING=ascii: printing the table's ± was a UnicodeEncodeError, after the
    # training and before the save, so the trained model was lost
    done = _python_dash_m("train", "--out", str(tmp_path), "--fast", "--quiet",
                          PYTHONIOENCODING="ascii")
    assert done.returncode == 0, done.stderr
    assert "(\\xb1 standard error)" in done.stdout
    assert (tmp_path / "paper_model.npz").is_file()


def test_a_corrupt_saved_model_says_how_to_get_past_it(tmp_path, capsys):
    (tmp_path / "paper_model.npz").write_text("not an archive")
    assert main(["figure", "convergence", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "paper_model.npz: not an .npz (zip) archive" in err
    assert err.rstrip().endswith("delete the file to train the model again there")
