"""Execute the tutorial notebooks from their percent scripts and stamp what they ran against.

    python notebooks/refresh.py                          # all of them
    python notebooks/refresh.py 02_knowledge_distillation

Each ``notebooks/NN_name.py`` (jupytext percent format, the source to edit) is executed top to
bottom in a fresh kernel and written, outputs included, to its paired ``NN_name.ipynb``, so results
and plots show where people browse the repository. The notebook's metadata (``kd_lightning``)
records a digest of the script and of every kd_lightning file the kernel imported; the fast test
``tests/test_notebooks.py`` recomputes them and names this command when they no longer match.

What the source digests cover, and why: only the package files the notebook actually imported
(a change elsewhere, say to the CLI, cannot change its outputs), and of those only the code:
comments and docstrings are dropped before hashing, so documentation edits do not stale every
notebook, while any change to a statement that ran does.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import os
import sys
import time
import tokenize
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COMMAND = "python notebooks/refresh.py"
METADATA_KEY = "kd_lightning"
# Run in the kernel after the notebook's own cells, then removed: which package files it imported.
PROBE = """import json as _json, sys as _sys
print(_json.dumps(sorted({m.__file__ for m in list(_sys.modules.values())
                          if getattr(m, "__file__", None) and m.__name__.split(".")[0] == "kd_lightning"})))"""


def scripts() -> list[Path]:
    """The notebooks' sources: ``notebooks/NN_name.py``."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def code_of(source: str) -> str:
    """The statements of a Python file: comments, docstrings, blank lines and trailing spaces removed."""
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            lines[row - 1] = lines[row - 1][:column]
    docstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and first.end_lineno is not None
            ):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    return "\n".join(line.rstrip() for number, line in enumerate(lines, 1) if number not in docstrings and line.strip())


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_digests(files: list[str]) -> dict[str, str]:
    """Digest of the code of each package file (paths relative to the repository root); missing files map to ''."""
    return {name: digest(code_of((ROOT / name).read_text())) if (ROOT / name).is_file() else "" for name in files}


def stamp(script: Path, sources: dict[str, str]) -> dict:
    return {"refresh": f"{COMMAND} {script.stem}", "script": digest(script.read_text()), "sources": sources}


def staleness(script: Path, notebook: nbformat.NotebookNode) -> list[str]:
    """Why the committed outputs of `notebook` may not come from the current `script` and package ([] if current)."""
    recorded = notebook.metadata.get(METADATA_KEY)
    if not recorded:
        return ["it carries no stamp"]
    reasons = []
    if recorded["script"] != digest(script.read_text()):
        reasons.append(f"{script.relative_to(ROOT)} changed")
    current = source_digests(list(recorded["sources"]))
    reasons += [f"{name} changed" for name, value in recorded["sources"].items() if current[name] != value]
    expected = [cell.source for cell in jupytext.read(script).cells]
    if [cell.source for cell in notebook.cells] != expected:
        reasons.append("its cells differ from the script's")
    return reasons


def execute(script: Path, timeout: int = 1200) -> nbformat.NotebookNode:
    """Run `script` top to bottom in a fresh kernel at the repository root, with this checkout's kd_lightning."""
    notebook = jupytext.read(script)
    # Digests taken before the run: an edit made while it runs then shows as a stale notebook.
    package = source_digests([str(path.relative_to(ROOT)) for path in (ROOT / "kd_lightning").rglob("*.py")])
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"  # stable ids and no timings: a refresh changes only what ran differently
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(ROOT)}},
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this checkout's kd_lightning, whatever is installed
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),  # tiny networks: one thread each is fastest
        "PYTHONWARNINGS": "ignore:IProgress not found",  # tqdm's note that ipywidgets is absent
    }
    client.execute(env=env)
    probe = notebook.cells.pop()
    files = json.loads(probe.outputs[-1]["text"])
    imported = sorted(str(Path(f).resolve().relative_to(ROOT)) for f in files)
    notebook.metadata[METADATA_KEY] = stamp(script, {name: package[name] for name in imported})
    return notebook


def refresh(script: Path) -> str:
    """Execute `script`, write its stamped ``.ipynb``; returns a one-line summary."""
    start = time.perf_counter()
    notebook = execute(script)
    jupytext.write(notebook, script.with_suffix(".ipynb"))
    return f"{script.with_suffix('.ipynb').relative_to(ROOT)}: executed in {time.perf_counter() - start:.0f} s"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all), e.g. 02_knowledge_distillation")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at once, one CPU thread each")
    args = parser.parse_args(argv)
    chosen = [s for s in scripts() if not args.names or s.stem in args.names]
    unknown = set(args.names) - {s.stem for s in chosen}
    if unknown:
        sys.exit(f"error: no notebook {sorted(unknown)}; choose from {[s.stem for s in scripts()]}")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for summary in pool.map(refresh, chosen):
            print(summary)


if __name__ == "__main__":
    main()
