"""Every tutorial runs: each tutorials/NN_*.py is executed as a notebook and must not fail.

The tutorials are jupytext percent-format files; each ends in a cell of asserts that uses
the package's tolerances, so executing one is a check of what it teaches. They run in a
fresh kernel (the ``python3`` kernel of this interpreter) with ``MINIMAL_ICL_FAST=1``,
which shortens the training runs of the tutorials that train, and ``MPLBACKEND=Agg``.
A failing assert or an exception fails the test and shows the cell and its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 120  # per cell; each tutorial is meant to take well under a minute in all


def read_notebook(path: Path):
    """The tutorial as an nbformat notebook (jupytext reads the percent format)."""
    import jupytext

    return jupytext.read(path)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path: Path, monkeypatch):
    """The tutorial executes top to bottom, its closing asserts included."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("MINIMAL_ICL_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    notebook = read_notebook(path)
    # run in an empty folder, so a tutorial cannot read or leave files in the checkout
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        extra_arguments=["--InteractiveShell.colors=nocolor"],  # plain-text tracebacks
        resources={"metadata": {"path": str(tmp_path)}},
    )
    failure = None
    try:
        client.execute()
    except CellExecutionError as error:
        failure = str(error)
    if failure is not None:
        pytest.fail(f"{path.name} failed:\n{failure}", pytrace=False)


def test_tutorials_exist_and_end_in_asserts():
    """There are tutorials, and the last code cell of each is a cell of asserts."""
    assert TUTORIALS, f"no tutorials found in {TUTORIALS_DIR}"
    for path in TUTORIALS:
        code = [c for c in read_notebook(path).cells if c.cell_type == "code"]
        assert code, f"{path.name} has no code cells"
        assert re.search(r"^assert ", code[-1].source, re.MULTILINE), (
            f"{path.name}: the last code cell must be a cell of asserts"
        )


def test_index_lists_every_tutorial():
    """tutorials/README.md links every tutorial file, and only files that exist."""
    index = (TUTORIALS_DIR / "README.md").read_text()
    linked = set(re.findall(r"\(([0-9][0-9]_\w+\.py)\)", index))
    present = {p.name for p in TUTORIALS}
    assert linked == present, f"README.md links {sorted(linked)}, tutorials/ has {sorted(present)}"
