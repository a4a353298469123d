"""Execute the tutorials and render them to a static HTML site.

    python tutorials/render_html.py [--out site] [--fast] [NAME ...]

Each tutorials/NN_*.py (jupytext percent format) is executed in a fresh ``python3``
kernel and exported with nbconvert's ``lab`` template: plots are embedded as PNG, and
math is typeset by MathJax 2 served from ``OUT/mathjax`` (copied from the
``jupyter-server-mathjax`` package, which ships the STIX-Web fonts), so the site needs no
network. ``OUT/index.html``
links the pages, with the one-line summaries of tutorials/README.md.

``--fast`` sets MINIMAL_ICL_FAST=1 (the short training runs the test suite uses); the
default renders the full reader's version. A tutorial that fails stops the build with
the failing cell's error.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TUTORIALS_DIR = Path(__file__).resolve().parent
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"
CDN_MATHJAX = "https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/latest.js?config=TeX-AMS_CHTML-full,Safe"

# The lab template, less the two scripts these pages never use and that would be fetched
# from a CDN (require.js for widgets; mermaid only loads when a diagram is present), with
# MathJax set to the fonts that jupyter-server-mathjax ships, a link back to the index, and
# the exercise solutions (cells collapsed in JupyterLab) folded into <details>, code and
# output together.
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
                                 imageFont: null}});
</script>
{{ super() }}
{%- endblock html_head_js_mathjax -%}
{%- block extra_css -%}
<style>
/* code and printed output wrap instead of scrolling sideways */
.jp-InputArea-editor pre, .jp-OutputArea-output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
details.solution > summary { cursor: pointer; color: #0969da; margin-left: 6rem;
                             font-family: var(--jp-ui-font-family); }
</style>
{%- endblock extra_css -%}
{%- block codecell -%}
{%- if cell.metadata.get("jupyter", {}).get("source_hidden") -%}
<details class="solution"><summary>{{ cell.metadata.get("solution_label", "show the solution") }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock codecell -%}
{%- block markdowncell scoped -%}
{%- if cell.metadata.get("jupyter", {}).get("source_hidden") -%}
<details class="solution"><summary>{{ cell.metadata.get("solution_label", "show the solution") }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock markdowncell -%}
{%- block body_header -%}
{{ super() }}
<nav style="font-family: var(--jp-ui-font-family); font-size: 0.9rem; margin: 0 0 0.5rem 0;">
<a href="index.html" style="color: #0969da; text-decoration: none;">&larr; all tutorials</a></nav>
{%- endblock body_header -%}
"""

INDEX_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>minimal_icl tutorials</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 52rem;
       margin: 2.5rem auto; padding: 0 1.25rem; line-height: 1.5; color: #1f2328; }}
h1 {{ font-size: 1.8rem; margin-bottom: 0.2rem; }}
p.lead {{ color: #57606a; margin-top: 0; }}
ol {{ padding-left: 1.6rem; }}
li {{ margin: 0.7rem 0; }}
li a {{ font-weight: 600; color: #0969da; text-decoration: none; }}
li a:hover {{ text-decoration: underline; }}
li span {{ display: block; color: #57606a; }}
li small {{ display: block; color: #6e7781; }}
footer {{ margin-top: 2.5rem; font-size: 0.85rem; color: #6e7781; }}
</style>
</head>
<body>
<h1>minimal_icl tutorials</h1>
<p class="lead">How a transformer learns in context without training: the implicit weight
update of Dherin et al. (2025, arXiv:2507.16003), worked through in NumPy. Every page was
executed; its last cell checks what it teaches.</p>
<p>Read them in the order below: each entry says which pages it builds on and how long it
takes to run. Every page uses one notation (docs/notation.md in the repository). The
"your turn" cells are yours to write: <code>make student</code> writes an edition of every
tutorial with those lines removed, and the check after each one tells you whether your
lines are right. Prerequisites: linear algebra (rank, norms, the pseudo-inverse), the
chain rule, and NumPy.</p>
<ol>
{items}
</ol>
<footer>Rendered {when} from tutorials/*.py{mode}.</footer>
</body>
</html>
"""


def tutorial_paths(names: list[str]) -> list[Path]:
    paths = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
    if names:
        wanted = [n.removesuffix(".py") for n in names]
        paths = [p for p in paths if p.stem in wanted or p.stem[:2] in wanted]
        if len(paths) != len(wanted):
            raise SystemExit(f"render_html: unknown tutorial in {names}")
    if not paths:
        raise SystemExit(f"render_html: no tutorials in {TUTORIALS_DIR}")
    return paths


def summaries() -> dict[str, tuple[str, str, str]]:
    """{file name: (title, summary, prerequisites)} from the index lines of
    tutorials/README.md: ``- **N.** [Title](NN_name.py) — summary *Read after: 1, 2.*``
    (the last part is optional)."""
    out = {}
    pattern = re.compile(
        r"^\s*[-*]\s*\*\*\d+\.\*\*\s*\[(?P<title>[^\]]+)\]\((?P<file>[0-9]{2}_\w+\.py)\)\s*[—-]+\s*"
        r"(?P<text>.*?)\s*(\*Read after: (?P<after>[^*]*)\*)?$"
    )
    for line in (TUTORIALS_DIR / "README.md").read_text().splitlines():
        match = pattern.match(line)
        if match:
            after = (match["after"] or "").strip().rstrip(".")
            out[match["file"]] = (match["title"], match["text"].strip(), after)
    return out


def index_item(page: Path, index: dict[str, tuple[str, str, str]], seconds: dict[str, float]) -> str:
    """One entry of the index page, numbered by the tutorial's file number, with what to
    read first and how long the page took to execute when it was rendered."""
    title, text, after = index.get(page.stem + ".py", (page.stem, "", ""))
    notes = [f"read after {after}" if after else "start here"]
    if page.stem in seconds:
        notes.append(f"runs in about {max(1, round(seconds[page.stem]))} s")
    return (f'<li value="{int(page.stem[:2])}"><a href="{page.name}">{html.escape(title)}</a>'
            f"<span>{html.escape(text)}</span><small>{html.escape(' · '.join(notes))}</small></li>")


def label_solutions(notebook) -> None:
    """Name each folded cell after the exercise it solves ("show solution 2"), from the
    "Solution k" its text starts with; a second fold for the same exercise says so."""
    seen = set()
    for cell in notebook.cells:
        if not cell.metadata.get("jupyter", {}).get("source_hidden"):
            continue
        match = re.search(r"Solution (\d+)", cell.source)
        if match is None:
            continue
        k = match[1]
        cell.metadata["solution_label"] = (f"show solution {k}" if k not in seen
                                           else f"show solution {k} (continued)")
        seen.add(k)


def merge_streams(notebook) -> None:
    """Join consecutive printed outputs of a cell (same stream) into one output block, so
    that a cell's prints render as one block, not one block per flush."""
    for cell in notebook.cells:
        merged = []
        for output in cell.get("outputs", []):
            previous = merged[-1] if merged else None
            if (output.get("output_type") == "stream" and previous is not None
                    and previous.get("output_type") == "stream" and previous["name"] == output["name"]):
                previous["text"] += output["text"]
            else:
                merged.append(output)
        if "outputs" in cell:
            cell["outputs"] = merged


def copy_mathjax(out: Path) -> str:
    """Copy MathJax 2 next to the pages; return the URL the pages load it from."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        print("render_html: jupyter-server-mathjax is not installed; pages load MathJax from a CDN "
              "(math renders only with network access). `make html` installs it.", file=sys.stderr)
        return CDN_MATHJAX
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = out / "mathjax"
    if not target.exists():
        shutil.copytree(static, target)
    return f"mathjax/MathJax.js?config={MATHJAX_CONFIG}"


def execute(path: Path, fast: bool, timeout: int):
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(path)
    # figures must come back as PNG outputs: the inline backend, whatever the caller set
    # (the Makefile exports MPLBACKEND=Agg, under which plt.show() would output nothing)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    if fast:
        os.environ["MINIMAL_ICL_FAST"] = "1"
    else:
        os.environ.pop("MINIMAL_ICL_FAST", None)
    with tempfile.TemporaryDirectory() as workdir:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                extra_arguments=["--InteractiveShell.colors=nocolor"],
                                resources={"metadata": {"path": workdir}})
        # the kernel's own stderr only carries start-up notices; cell errors come back as
        # messages and are reported with the failing cell
        client.execute(stderr=subprocess.DEVNULL)
    merge_streams(notebook)
    label_solutions(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="tutorials to render (e.g. 01 or 01_block_by_hand); default all")
    parser.add_argument("--out", default="site", help="output folder (default: site)")
    parser.add_argument("--fast", action="store_true", help="short training runs (MINIMAL_ICL_FAST=1)")
    parser.add_argument("--timeout", type=int, default=300, help="per-cell timeout in seconds")
    args = parser.parse_args(argv)

    import jinja2
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[jinja2.DictLoader({"minimal_icl_page.html.j2": PAGE_TEMPLATE})],
    )
    exporter.template_file = "minimal_icl_page.html.j2"
    exporter.mathjax_url = copy_mathjax(out)

    index = summaries()
    times_file = out / "run_times.json"
    seconds = json.loads(times_file.read_text()) if times_file.exists() else {}
    items = []
    for path in tutorial_paths(args.names):
        start = time.perf_counter()
        try:
            notebook = execute(path, args.fast, args.timeout)
        except CellExecutionError as error:
            print(f"render_html: {path.name} failed:\n{error}", file=sys.stderr)
            return 1
        body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": path.stem}})
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        seconds[path.stem] = time.perf_counter() - start
        print(f"{path.name}: executed and rendered in {seconds[path.stem]:5.1f} s -> {page}")
        items.append(index_item(page, index, seconds))

    times_file.write_text(json.dumps(seconds, indent=1))
    rendered = sorted(out.glob("[0-9][0-9]_*.html"))
    if len(rendered) != len(items):  # keep pages rendered earlier (partial re-render)
        items = [index_item(page, index, seconds) for page in rendered]
    (out / "index.html").write_text(
        INDEX_PAGE.format(items="\n".join(items), when=time.strftime("%Y-%m-%d"),
                          mode=" (fast mode)" if args.fast else ""),
        encoding="utf-8",
    )
    print(f"index: {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
