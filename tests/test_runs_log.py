"""The runs log's provenance: a row is marked dirty for changed code, never for the result files drivers write."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import _runs_log


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("kd_lightning/a.py", "benchmarks/results/runs.jsonl", "benchmarks/RESULTS_x.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    monkeypatch.setattr(_runs_log, "ROOT", tmp_path)
    return tmp_path


def test_rows_and_reports_written_by_drivers_leave_the_code_clean(repo: Path) -> None:
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "benchmarks/results/runs.jsonl").write_text("0\n1\n")
    (repo / "benchmarks/RESULTS_x.md").write_text("a new table\n")
    assert _runs_log.provenance()["commit"] == head


def test_changed_code_marks_the_row_dirty(repo: Path) -> None:
    (repo / "kd_lightning/a.py").write_text("1\n")
    assert _runs_log.provenance()["commit"] == _git(repo, "rev-parse", "HEAD") + " dirty"


def test_write_section_replaces_only_the_text_between_its_markers(tmp_path: Path) -> None:
    report = tmp_path / "R.md"
    report.write_text("intro\n<!-- a -->\nold\n<!-- /a -->\noutro\n")
    _runs_log.write_section(report, ["<!-- a -->", "new", "<!-- /a -->"])
    assert report.read_text() == "intro\n<!-- a -->\nnew\n<!-- /a -->\noutro\n"
    _runs_log.write_section(report, ["<!-- b -->", "b", "<!-- /b -->"])
    assert report.read_text().endswith("outro\n\n<!-- b -->\nb\n<!-- /b -->\n")


@pytest.mark.parametrize(("dof", "quantile"), [(1, 12.7062), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_student_t_quantile_matches_the_printed_tables(dof: int, quantile: float) -> None:
    assert _runs_log.student_t_quantile(0.975, dof) == pytest.approx(quantile, abs=1e-4)


def test_mean_interval_of_five_paired_differences_by_hand() -> None:
    # mean 3, sample std sqrt(2.5), t(0.975, 4) = 2.7764: half-width 2.7764 * sqrt(2.5 / 5) = 1.9632
    low, high = _runs_log.mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert low == pytest.approx(3 - 1.9632, abs=1e-4)
    assert high == pytest.approx(3 + 1.9632, abs=1e-4)
