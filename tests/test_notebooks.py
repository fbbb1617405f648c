"""The tutorial notebooks: committed executed, from the current scripts and package, and they run in fast mode.

Each notebook's source is its jupytext percent script (``notebooks/NN_name.py``); the ``.ipynb`` next
to it is what `notebooks/refresh.py` wrote after executing it, stamped with digests of the script and
of the kd_lightning code it imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from tests._extras import require_extra

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["01_transfer_learning", "02_knowledge_distillation", "03_teacher_to_deployment", "04_text_distillation"]
SCRIPTS = [ROOT / "notebooks" / f"{name}.py" for name in NAMES]

_spec = importlib.util.spec_from_file_location("refresh", ROOT / "notebooks" / "refresh.py")
assert _spec and _spec.loader
refresh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refresh)


def test_every_notebook_has_a_script_and_an_executed_ipynb() -> None:
    assert refresh.scripts() == SCRIPTS
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == NAMES
    for script in SCRIPTS:
        notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert code and all(cell.execution_count for cell in code), f"{script.stem} is not fully executed"
        errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
        assert not errors, f"{script.stem} was committed with an error"
        assert any("image/png" in out.get("data", {}) for cell in code for out in cell.outputs), script.stem


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_committed_outputs_come_from_the_current_code(script: Path) -> None:
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    reasons = refresh.staleness(script, notebook)
    assert not reasons, f"{script.stem}.ipynb is stale ({'; '.join(reasons)}): run `{refresh.COMMAND} {script.stem}`"


def test_staleness_names_the_changed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "kd_lightning").mkdir()
    module = tmp_path / "kd_lightning" / "losses.py"
    module.write_text('"""Docstring."""\n\nT = 4  # a comment\n')
    script = tmp_path / "notebooks" / "01_demo.py"
    script.write_text("# %%\nprint(1)\n")
    monkeypatch.setattr(refresh, "ROOT", tmp_path)
    notebook = jupytext.read(script)
    notebook.metadata[refresh.METADATA_KEY] = refresh.stamp(script, refresh.source_digests(["kd_lightning/losses.py"]))
    assert refresh.staleness(script, notebook) == []

    module.write_text('"""Another docstring."""\n\n\nT = 4  # another comment\n')  # documentation only
    assert refresh.staleness(script, notebook) == []
    module.write_text('"""Docstring."""\n\nT = 2\n')
    assert refresh.staleness(script, notebook) == ["kd_lightning/losses.py changed"]
    module.unlink()
    assert refresh.staleness(script, notebook) == ["kd_lightning/losses.py changed"]
    script.write_text("# %%\nprint(2)\n")
    assert "notebooks/01_demo.py changed" in refresh.staleness(script, notebook)
    assert "its cells differ from the script's" in refresh.staleness(script, notebook)


def test_code_of_drops_comments_and_docstrings_only() -> None:
    source = '"""Module."""\n\n\ndef f(x):  # why\n    """Doc\n    string."""\n    return "not a docstring"  # note\n'
    assert refresh.code_of(source) == 'def f(x):\n    return "not a docstring"'


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_notebook_executes(script: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "onnxruntime" in script.read_text():
        require_extra("export")
    monkeypatch.setenv("KD_FAST", "1")
    monkeypatch.setenv("KD_NOTEBOOK_OUTPUT", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's kd_lightning, whatever is installed
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: threads only contend on a shared CPU
    notebook = jupytext.read(script)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [out for cell in notebook.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors
