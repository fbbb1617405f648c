"""benchmarks/few_labels.py: the issue-14 schema, resumability, the RESULTS.md section and a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import few_labels


def _row(regime: str, model: str, seed: int, acc: float) -> dict:
    return dict(
        regime=regime,
        model=model,
        seed=seed,
        test_acc=acc,
        val_acc=acc,
        best_epoch=1,
        labelled=100,
        params=4370 if model != "teacher" else 3_383_818,
        size_bytes=1000,
        input_size=28 if model != "teacher" else 64,
        fit_s=1.0,
        test_s=1.0,
        command=f"cmd {regime} {model}",
    )


def test_summary_has_the_issue_schema_with_seeds_aligned() -> None:
    rows = [
        _row("k100", "scratch", 1, 0.70),
        _row("k100", "scratch", 0, 0.60),
        _row("k100", "teacher", 0, 0.90),
        _row("k100", "teacher", 1, 0.80),
        _row("full", "teacher", 0, 0.95),  # trained only to teach: not in the issue's "full" entry
        _row("full", "scratch", 0, 0.88),
    ]
    summary = few_labels.summarise(rows, {"k100/teacher": 20.0, "k100/scratch": 0.5})
    assert set(summary) == {"k100", "full"} and set(summary["full"]) == {"scratch"}
    teacher, scratch = summary["k100"]["teacher"], summary["k100"]["scratch"]
    for entry in (teacher, scratch):
        assert {"test_acc", "params", "latency_b1_ms", "command"} <= set(entry)
    assert scratch["seeds"] == teacher["seeds"] == [0, 1]
    assert scratch["test_acc"] == [0.60, 0.70] and teacher["latency_b1_ms"] == 20.0
    differences = few_labels.paired(summary, "k100", "teacher", "scratch")
    assert differences == [(0, pytest.approx(0.30)), (1, pytest.approx(0.10))]


def test_results_section_is_replaced_in_place(tmp_path: Path) -> None:
    report = tmp_path / "RESULTS.md"
    report.write_text("# results\n\n## other section\nkept\n")
    few_labels.write_section(report, [few_labels.SECTION_START, "first", few_labels.SECTION_END])
    few_labels.write_section(report, [few_labels.SECTION_START, "second", few_labels.SECTION_END])
    text = report.read_text()
    assert "kept" in text and "second" in text and "first" not in text
    assert text.count(few_labels.SECTION_START) == 1


def test_finished_runs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "few_labels_runs.jsonl"
    runs.write_text("".join(json.dumps(_row("k10", m, s, 0.5)) + "\n" for m in few_labels.MODELS for s in (0, 1)))

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(few_labels, "train_and_test", must_not_train)
    few_labels.main(["--smoke", "--out", str(tmp_path), "--regimes", "k10", "--seeds", "0", "1"])
    summary = json.loads((tmp_path / "few_labels.json").read_text())
    assert summary["k10"]["distilled"]["test_acc"] == [0.5, 0.5]
    assert (tmp_path / "few_labels_accuracy.png").stat().st_size > 0
    assert len(runs.read_text().splitlines()) == 2 * len(few_labels.MODELS)


@pytest.mark.slow
def test_smoke_protocol_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    few_labels.main(["--smoke", "--out", str(out), "--regimes", "k10", "--seeds", "0", "1", "--latency"])
    summary = json.loads((out / "few_labels.json").read_text())
    for model in few_labels.MODELS:
        entry = summary["k10"][model]
        assert entry["seeds"] == [0, 1] and len(entry["test_acc"]) == 2
        assert all(0.0 <= acc <= 1.0 for acc in entry["test_acc"])
        assert entry["params"] > 0 and entry["latency_b1_ms"] > 0
    rows = (out / "few_labels_runs.jsonl").read_text().splitlines()
    few_labels.main(["--smoke", "--out", str(out), "--regimes", "k10", "--seeds", "0", "1"])
    assert (out / "few_labels_runs.jsonl").read_text().splitlines() == rows


def test_full_label_students_train_for_equal_epochs_on_all_labels() -> None:
    """The full-label comparison is scratch vs distilled at equal epochs and schedule, on all labels (issue 14)."""

    def option(stage: few_labels.Stage, name: str) -> str | None:
        args = list(stage.overrides)
        return args[args.index(name) + 1] if name in args else None

    full = {stage.model: stage for stage in few_labels.stages("full")}
    assert set(full) == {"teacher", "scratch", "distilled"}
    for name in ("--trainer.max_epochs", "--model.init_args.lr_scheduler.init_args.T_max"):
        assert option(full["distilled"], name) == option(full["scratch"], name) is not None
    assert option(full["distilled"], "--data.init_args.samples_per_class") == "null"
    assert option(full["distilled"], "--data.init_args.unlabeled") == "null"
