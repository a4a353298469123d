"""Every tutorial runs, and every student edition stops at a check.

Each tutorials/NN_*.py is executed as a notebook and must not fail. Its student edition
(tutorials/make_student.py: every BEGIN/END SOLUTION block replaced by a placeholder) is
executed too, and each "your turn" cell must be followed by a check that fails on the
placeholder with an ExerciseError: a check that cannot fail would pass a learner who
wrote nothing.

The tutorials are jupytext percent-format files; each ends in a cell of asserts that uses
the package's tolerances, so executing one is a check of what it teaches. They run in a
fresh kernel (the ``python3`` kernel of this interpreter) with ``MINIMAL_ICL_FAST=1``,
which shortens the training runs of the tutorials that train, and ``MPLBACKEND=Agg``.
A failing assert or an exception fails the test and shows the cell and its traceback.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 120  # per cell; each tutorial is meant to take well under a minute in all


def read_notebook(path: Path):
    """The tutorial as an nbformat notebook (jupytext reads the percent format)."""
    import jupytext

    return jupytext.read(path)


def make_student():
    """tutorials/make_student.py as a module."""
    spec = importlib.util.spec_from_file_location("make_student", TUTORIALS_DIR / "make_student.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_student", module)
    spec.loader.exec_module(module)
    return module


def client_for(notebook, workdir: Path, monkeypatch, allow_errors: bool = False):
    """An nbclient runner in an empty folder (a tutorial cannot read or leave files in the
    checkout), with the test suite's short training runs and a headless backend."""
    from nbclient import NotebookClient

    monkeypatch.setenv("MINIMAL_ICL_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    return NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        allow_errors=allow_errors,
        extra_arguments=["--InteractiveShell.colors=nocolor"],  # plain-text tracebacks
        resources={"metadata": {"path": str(workdir)}},
    )


def error_of(cell) -> str | None:
    """The name of the exception a code cell raised, or None."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return output.get("ename")
    return None


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path: Path, tmp_path: Path, monkeypatch):
    """The tutorial executes top to bottom, its checks and closing asserts included."""
    from nbclient.exceptions import CellExecutionError

    notebook = read_notebook(path)
    client = client_for(notebook, tmp_path, monkeypatch)
    failure = None
    try:
        client.execute()
    except CellExecutionError as error:
        failure = str(error)
    if failure is not None:
        pytest.fail(f"{path.name} failed:\n{failure}", pytrace=False)
    # a check prints its verdict; its return value (residuals, for the tests) is not shown
    # to the reader as a stray Out[] line under it
    for cell in notebook.cells:
        if cell.cell_type == "code" and cell.source.strip().startswith("check_"):
            shown = [o for o in cell.get("outputs", []) if o.get("output_type") == "execute_result"]
            assert not shown, f"{path.name}: the check cell shows its return value: {cell.source}"


def test_saving_an_unchanged_tutorial_changes_no_byte(tmp_path: Path):
    """Opened and saved through jupytext's contents manager (what JupyterLab does, with
    tutorials/jupytext.toml), every tutorial is written back byte for byte. Needs the
    tutorials extra (jupyter_server), which `make tutorials` installs."""
    pytest.importorskip("jupyter_server")
    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    shutil.copy(TUTORIALS_DIR / "jupytext.toml", tmp_path)
    for path in TUTORIALS:
        shutil.copy(path, tmp_path)
    manager = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(tmp_path))
    for path in TUTORIALS:
        model = manager.get(path.name, content=True, type="notebook")
        manager.save(model, path.name)
        saved = (tmp_path / path.name).read_bytes()
        assert saved == path.read_bytes(), f"{path.name} changes when saved from JupyterLab"


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


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_student_edition_stops_at_every_check(path: Path, tmp_path: Path, monkeypatch):
    """In the student edition each "your turn" cell runs (it only defines the function the
    reader writes), the first cell that fails is a check, and every check that follows a
    your-turn cell fails with an ExerciseError on the placeholder."""
    notebook, n_blocks = make_student().student_notebook(path)
    assert n_blocks >= 1, f"{path.name} has no BEGIN/END SOLUTION block: no your-turn cell"
    client_for(notebook, tmp_path, monkeypatch, allow_errors=True).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    turns = [k for k, c in enumerate(code) if "NotImplementedError(\"your turn" in c.source]
    assert len(turns) >= 1
    for k in turns:
        assert error_of(code[k]) is None, (
            f"{path.name}: the your-turn cell itself fails ({error_of(code[k])}); put the"
            f" solution inside a function that the next cell's check calls:\n{code[k].source}"
        )
        assert k + 1 < len(code) and error_of(code[k + 1]) == "ExerciseError", (
            f"{path.name}: the cell after a your-turn cell must be a check that fails on the"
            f" placeholder with an ExerciseError; it gave {error_of(code[k + 1])!r}:\n"
            f"{code[k + 1].source}"
        )
    first_failure = next(c for c in code if error_of(c) is not None)
    assert error_of(first_failure) == "ExerciseError", (
        f"{path.name}: the student edition first fails with {error_of(first_failure)},"
        f" not at a check:\n{first_failure.source}"
    )


def test_make_student_replaces_each_block_and_rejects_broken_markers():
    """strip_solutions keeps the indentation, counts the blocks, and refuses an unclosed,
    unopened or nested marker."""
    strip = make_student().strip_solutions
    text, n = strip("def f(a):\n    ### BEGIN SOLUTION\n    b = 2 * a\n    ### END SOLUTION\n    return b\n")
    assert n == 1
    assert text.splitlines()[1].startswith("    raise NotImplementedError(\"your turn")
    assert "2 * a" not in text and text.splitlines()[-1] == "    return b"
    for broken in ("### BEGIN SOLUTION\nx = 1\n", "x = 1\n### END SOLUTION\n",
                   "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n"):
        with pytest.raises(ValueError, match="SOLUTION"):
            strip(broken)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_every_page_has_a_summary_exercises_folded_solutions_and_the_notation(path: Path):
    """The shape of a page (docs/notation.md, tutorials/README.md): a "## Summary" section,
    a "## Exercises" section with at least three numbered exercises, a folded solution
    (a cell hidden in JupyterLab, a <details> block on the site) for each, and a link to
    the notation table."""
    notebook = read_notebook(path)
    markdown = [c.source for c in notebook.cells if c.cell_type == "markdown"]
    assert any(re.search(r"^## Summary\b", m, re.MULTILINE) for m in markdown), f"{path.name}: no Summary"
    exercises = [m for m in markdown if re.search(r"^## Exercises\b", m, re.MULTILINE)]
    assert len(exercises) == 1, f"{path.name}: needs exactly one '## Exercises' section"
    numbered = re.findall(r"^(\d+)\. ", exercises[0], re.MULTILINE)
    assert len(numbered) >= 3, f"{path.name}: {len(numbered)} exercises, at least 3 expected"
    folded = [c for c in notebook.cells if c.metadata.get("jupyter", {}).get("source_hidden")]
    solutions = {int(k) for c in folded for k in re.findall(r"Solution (\d+)", c.source)}
    assert {int(k) for k in numbered} <= solutions, (
        f"{path.name}: exercises {sorted({int(k) for k in numbered} - solutions)} have no folded"
        f" solution (a hidden cell starting 'Solution k')"
    )
    assert any("notation.md" in m for m in markdown), f"{path.name}: does not link docs/notation.md"
