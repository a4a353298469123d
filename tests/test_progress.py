"""The live progress line (minimal_icl.progress) and the command line's training log."""

from __future__ import annotations

import io

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
