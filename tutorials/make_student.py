"""Write the student edition of the tutorials: every solution replaced by a placeholder.

    python tutorials/make_student.py [--out student] [NAME ...]

In each tutorial the lines between nbgrader's markers, ``### BEGIN SOLUTION`` and
``### END SOLUTION``, are the reader's to write. The student edition keeps everything
else and replaces each such block by

    raise NotImplementedError("your turn: ...")

at the block's indentation. Every "your turn" block sits inside a function that the next
cell hands to a check from ``minimal_icl.exercises``; the check reports the placeholder as
"not written yet", so an unedited student tutorial stops at its first check. Write the
lines, rerun the cell and the check tells you whether they are right, or what looks wrong.

Each tutorial is written twice into OUT: as a jupytext ``.py`` file (the format of
tutorials/) and as an ``.ipynb`` notebook that any Jupyter opens without jupytext.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

TUTORIALS_DIR = Path(__file__).resolve().parent
BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\b(?P<rest>.*)$")
END = re.compile(r"^[ \t]*### END SOLUTION\b")
PLACEHOLDER = (
    'raise NotImplementedError("your turn: write the lines that replace this one'
    ' (the text above the cell says what to compute)")'
)


def strip_solutions(source: str, where: str = "tutorial") -> tuple[str, int]:
    """Replace every BEGIN/END SOLUTION block of ``source``; return (text, blocks replaced).

    Raises ValueError for an unmatched or nested marker, naming ``where`` and the line.
    """
    out: list[str] = []
    inside_since = None
    n_blocks = 0
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        begin = BEGIN.match(line)
        if begin:
            if inside_since is not None:
                raise ValueError(f"{where}:{number}: BEGIN SOLUTION inside the block opened at line {inside_since}")
            inside_since = number
            out.append(f"{begin['indent']}{PLACEHOLDER}\n")
            n_blocks += 1
        elif END.match(line):
            if inside_since is None:
                raise ValueError(f"{where}:{number}: END SOLUTION without a BEGIN SOLUTION")
            inside_since = None
        elif inside_since is None:
            out.append(line)
    if inside_since is not None:
        raise ValueError(f"{where}:{inside_since}: BEGIN SOLUTION is never closed by END SOLUTION")
    return "".join(out), n_blocks


def tutorial_paths(names: list[str]) -> list[Path]:
    paths = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
    if names:
        wanted = {n.removesuffix(".py") for n in names}
        paths = [p for p in paths if p.stem in wanted or p.stem[:2] in wanted]
        if len(paths) != len(wanted):
            raise SystemExit(f"make_student: unknown tutorial in {names}")
    return paths


def student_notebook(path: Path):
    """The student edition of one tutorial as an nbformat notebook, and its block count."""
    import jupytext

    text, n_blocks = strip_solutions(path.read_text(encoding="utf-8"), where=path.name)
    return jupytext.reads(text, fmt="py:percent"), n_blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="tutorials (e.g. 02 or 02_context_as_weight_update); default all")
    parser.add_argument("--out", default="student", help="output folder (default: student)")
    args = parser.parse_args(argv)

    import jupytext

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in tutorial_paths(args.names):
        notebook, n_blocks = student_notebook(path)
        if n_blocks == 0:
            raise SystemExit(f"make_student: {path.name} has no BEGIN/END SOLUTION block")
        jupytext.write(notebook, out / path.name, fmt="py:percent")
        jupytext.write(notebook, out / f"{path.stem}.ipynb")
        print(f"{path.name}: {n_blocks} your-turn block(s) -> {out / path.name}, {out / path.stem}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
