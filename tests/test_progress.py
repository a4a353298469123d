"""The live progress line (minimal_icl.progress) and the command line's training log."""

from __future__ import annotations

import io
import types

from minimal_icl.cli import main
from minimal_icl.progress import ProgressLine, progress_enabled


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    terminal = FakeTerminal()
    assert progress_enabled(terminal) and not progress_enabled(terminal, quiet=True)
    assert not progress_enabled(io.StringIO())
    line = ProgressLine(terminal)
    line.update("first", force=True)
    line.update("second")  # within 0.1 s of the first: not drawn
    line.update("third", force=True)
    line.clear()
    assert terminal.getvalue() == "\rfirst\x1b[K\rthird\x1b[K\r\x1b[K"
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled(terminal)
    silent = FakeTerminal()
    line = ProgressLine(silent, enabled=False)
    line.update("x", force=True)
    line.clear()
    assert silent.getvalue() == ""


def test_train_command_draws_its_progress_line_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CI", raising=False)
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["train", "--out", str(tmp_path), "--fast", "--steps", "60"]) == 0
    text = terminal.getvalue()
    assert "\r" in text and "step 60/60" in text and "steps/s" in text
    assert text.endswith("\r\x1b[K")  # the line is erased at the end
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in printed if line.startswith("step")] == ["0", "60"]
    quiet = FakeTerminal()
    monkeypatch.setattr("sys.stderr", quiet)
    assert main(["train", "--out", str(tmp_path), "--fast", "--steps", "5", "--quiet"]) == 0
    assert quiet.getvalue() == ""


def test_unforced_updates_are_drawn_once_the_interval_has_passed(monkeypatch):
    """``interval`` throttles unforced updates only: with a clock that moves by 0.25 s per
    reading (exact in binary), an interval of 0.5 s draws every other update."""
    clock = iter(0.25 * k for k in range(100))
    fake_time = types.SimpleNamespace(perf_counter=lambda: next(clock))
    monkeypatch.setattr("minimal_icl.progress.time", fake_time)  # this module's clock only
    terminal = FakeTerminal()
    line = ProgressLine(terminal, interval=0.5)
    for k in range(5):  # at 0, 0.25, 0.5, 0.75, 1 s
        line.update(str(k))
    assert terminal.getvalue() == "\r0\x1b[K\r2\x1b[K\r4\x1b[K"
