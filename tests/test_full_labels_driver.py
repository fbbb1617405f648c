"""benchmarks/full_labels.py: selection reads validation only, the schema, the bars, resumability, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import full_labels
from kd_lightning.data.digits import DigitsDataModule


def _row(stage: str, size: str | None, seed: int, acc: float, **extra) -> dict:
    setting = full_labels.Setting()
    return dict(
        stage=stage,
        size=size,
        seed=seed,
        test_acc=acc,
        params=1000,
        size_bytes=4000,
        steps=12660,
        fit_s=10.0,
        command=full_labels.command_of(stage, size, [seed], setting),
        commit="abc",
        **extra,
    )


def _grid(size: str, accs: tuple[float, ...]) -> list[dict]:
    return [
        dict(stage="select", size=size, seed=0, temperature=t, alpha=a, val_acc=acc, steps=1, fit_s=1.0, commit="abc")
        for (t, a), acc in zip(full_labels.GRID, accs, strict=True)
    ]


def _students(size: str, scratch: list[float], lead: list[float]) -> list[dict]:
    rows = [_row("scratch", size, seed, acc) for seed, acc in enumerate(scratch)]
    return rows + [
        _row("distilled", size, seed, acc + d) for seed, (acc, d) in enumerate(zip(scratch, lead, strict=True))
    ]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> full_labels.Setting:
    """The smoke setting with its teaching teacher trained (seconds on digits)."""
    setting = full_labels.Setting(smoke=True, out=tmp_path_factory.mktemp("full"))
    full_labels.run_teacher(full_labels.TEACHING_SEED, setting)
    return setting


def test_selection_never_loads_the_test_split(smoke: full_labels.Setting, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []
    original = DigitsDataModule.load_split

    def recording(self: DigitsDataModule, split: str):
        loaded.append(split)
        return original(self, split)

    monkeypatch.setattr(DigitsDataModule, "load_split", recording)
    row = full_labels.run_selection("5k", 4.0, 0.9, smoke)
    assert loaded == ["train"]
    assert "test_acc" not in row and 0.0 <= row["val_acc"] <= 1.0
    assert (row["temperature"], row["alpha"]) == (4.0, 0.9)
    # The choice reads validation accuracy only: rows carrying a test accuracy would not change it.
    rows = _grid("5k", (0.80, 0.85, 0.85, 0.70))
    assert full_labels.chosen(rows, "5k") == (2.0, 0.9)  # a tie goes to the earlier candidate
    assert full_labels.chosen([r | {"test_acc": 1.0 - r["val_acc"]} for r in rows], "5k") == (2.0, 0.9)
    assert full_labels.chosen(rows[:3], "5k") is None  # not before every candidate ran


def test_the_distilled_student_runs_the_scratch_recipe_with_its_chosen_objective(smoke: full_labels.Setting) -> None:
    scratch = full_labels.cli_args("scratch", "50k", 3, smoke)
    distilled = full_labels.cli_args("distilled", "50k", 3, smoke, temperature=4.0, alpha=0.5)
    configs = [full_labels.read_config(f"{kind}_50k.yaml") for kind in ("scratch", "distill")]
    for key in ("trainer", "data"):
        assert {k: v for k, v in configs[0][key].items() if k not in ("default_root_dir", "callbacks")} == {
            k: v for k, v in configs[1][key].items() if k not in ("default_root_dir", "callbacks")
        }
    model = [config["model"]["init_args"] for config in configs]
    assert model[0]["network"] == model[1]["student"]
    assert model[0]["optimizer"] == model[1]["optimizer"] and model[0]["lr_scheduler"] == model[1]["lr_scheduler"]
    # One fixed view per epoch: the cached student meets as many distinct views as the scratch one.
    assert model[1]["teacher_cache"]["views"] == configs[1]["trainer"]["max_epochs"]
    assert distilled[distilled.index("--model.init_args.temperature") + 1] == "4.0"
    assert distilled[distilled.index("--model.init_args.alpha") + 1] == "0.5"
    teacher = json.loads(distilled[distilled.index("--model.init_args.teacher") + 1])
    assert teacher["weights_path"] == str(smoke.teacher_weights(full_labels.TEACHING_SEED))
    assert scratch[scratch.index("--seed_everything") + 1] == distilled[distilled.index("--seed_everything") + 1]


def test_student_sizes_span_a_hundredfold_below_the_teacher() -> None:
    setting = full_labels.Setting()
    params = [full_labels.count_parameters(full_labels.build(full_labels.student_spec(s))) for s in full_labels.SIZES]
    assert params == [4782, 48162, 495400]
    teacher = full_labels.count_parameters(full_labels.build(full_labels.teacher_spec(setting)))
    assert teacher == 2_748_602 and teacher > 5 * params[-1]


def test_plan_runs_the_teaching_teacher_first_and_the_other_teacher_seeds_last() -> None:
    tasks = list(full_labels.plan(list(full_labels.STAGES), ["5k"], None))
    assert tasks[0] == full_labels.Task("teacher", None, 0)
    assert [t.stage for t in tasks[1:5]] == ["select"] * 4 and tasks[5] == full_labels.Task("scratch", "5k", 0)
    assert tasks[-2:] == [full_labels.Task("teacher", None, 1), full_labels.Task("teacher", None, 2)]
    assert len(tasks) == 3 + 4 + 2 * 5
    assert [t.stage for t in full_labels.plan(["teacher", "scratch"], ["5k"], [3])] == ["scratch"]


def test_summary_has_the_issue_schema_with_seeds_aligned() -> None:
    rows = [_row("teacher", None, s, 0.95, val_acc=0.96) for s in (1, 0)]
    rows += _grid("5k", (0.80, 0.85, 0.84, 0.70)) + _students("5k", [0.80, 0.81], [0.01, 0.02])
    rows.append(_row("scratch", "50k", 2, 0.9))
    latency = {"teacher": {"min": 3.0, "median": 3.5, "max": 4.0}, "5k": {"min": 0.1, "median": 0.2, "max": 0.3}}
    summary = full_labels.summarise(rows, latency, full_labels.Setting())
    assert set(summary) == {"teacher", "students"}
    teacher = summary["teacher"]
    assert {"test_acc", "params", "latency_b1_ms", "command"} <= set(teacher)
    assert teacher["seeds"] == [0, 1] and teacher["latency_b1_ms"] == 3.5 and teacher["params"] == 2_748_602
    assert teacher["command"] == "python benchmarks/full_labels.py --stages teacher --seeds 0 1"
    assert [s["name"] for s in summary["students"]] == list(full_labels.SIZES)
    small = summary["students"][0]
    assert {"name", "params", "latency_b1_ms", "scratch", "distilled"} <= set(small)
    assert small["params"] == 4782 and small["latency_b1_ms_range"] == [0.1, 0.3]
    assert small["scratch"]["test_acc"] == [0.80, 0.81] and small["scratch"]["seeds"] == [0, 1]
    distilled = small["distilled"]
    assert {"method", "alpha", "temperature", "test_acc", "command"} <= set(distilled)
    assert (distilled["method"], distilled["temperature"], distilled["alpha"]) == ("kd", 2.0, 0.9)
    assert distilled["test_acc"] == pytest.approx([0.81, 0.83])
    assert distilled["command"] == "python benchmarks/full_labels.py --stages distilled --sizes 5k --seeds 0 1"
    assert summary["students"][1]["distilled"]["alpha"] is None and summary["students"][1]["scratch"]["seeds"] == [2]
    assert summary["students"][2]["latency_b1_ms"] is None


def test_verdicts_say_which_sizes_meet_the_bar_and_why_the_others_do_not() -> None:
    rows = [_row("teacher", None, 0, 0.930, val_acc=0.94)]
    rows += _students("5k", [0.80] * 5, [0.006, 0.007, 0.005, 0.008, 0.009])  # +0.70, every seed ahead
    rows += _students("50k", [0.90] * 5, [0.02, 0.01, 0.01, 0.01, -0.001])  # +0.98, one seed behind
    rows += _students("500k", [0.93] * 3, [0.002, 0.002, 0.002])  # +0.20 on 3 seeds
    lines = full_labels.verdict_lines(full_labels.summarise(rows, {}, full_labels.Setting()))
    assert lines[0] == "- teacher: 93.00 % test accuracy (1 seed(s)); misses the 93.5 % bar."
    assert lines[1].startswith("- 5k (4,782 parameters): distilled − scratch +0.70 points, ahead on 5 of 5 seeds")
    assert lines[1].endswith("(all seeds): meets the bar.")
    assert lines[2].endswith("does NOT meet the bar (ahead on 4 of 5 seeds only).")
    assert "+0.98 points" in lines[2]
    assert lines[3].endswith("(3 of 5 seeds, provisional): does NOT meet the bar (mean lead +0.20 points < 0.5).")
    assert lines[4] == "- sizes where distillation meets the bar on all 5 seeds: 1 of 3 (the issue asks for 2)."


def test_missing_runs_are_listed_by_stage_and_size() -> None:
    rows = [_row("teacher", None, 0, 0.95)] + _grid("5k", (0.8, 0.8, 0.8, 0.8))
    rows += _students("5k", [0.8] * 5, [0.0] * 5)
    missing = full_labels.missing_runs(rows)
    assert missing[0] == "select 50k: T=2/α=0.5, T=2/α=0.9, T=4/α=0.5, T=4/α=0.9"
    assert "scratch 500k: seed 0, seed 1, seed 2, seed 3, seed 4" in missing
    assert missing[-1] == "teacher: seed 1, seed 2"
    assert not any(line.startswith(("select 5k", "scratch 5k", "distilled 5k")) for line in missing)


def test_cost_estimate_from_one_timing_row() -> None:
    timing = {"step_s": {"teacher": 1.0, "5k": 0.01, "50k": 0.02, "500k": 0.1}, "teacher_images_per_s": 1000.0}
    hours = full_labels.estimate_hours(timing)
    # 422 steps an epoch (54,000 images at batch 128); the teacher: 60 epochs, 12 checks of 6,000 validation
    # images + 64 precise-BN batches; the students: 30 epochs, 30 cached views of the 54,000 images.
    assert hours["teacher"] == round(3 * (60 * 422 * 1.0 + 12 * (6000 + 64 * 128) / 1000) / 3600, 2) == 21.24
    assert hours["teacher_cache"] == round(54000 * 30 / 1000 / 3600, 2) == 0.45
    assert hours["select"] == round(4 * 30 * 422 * 0.13 / 3600, 2) == 1.83
    assert hours["scratch"] == hours["distilled"] == round(5 * 30 * 422 * 0.13 / 3600, 2) == 2.29
    assert hours["total"] == 28.1


def test_finished_runs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [_row("teacher", None, 0, 0.95, val_acc=0.96)] + _grid("5k", (0.8, 0.9, 0.8, 0.8))
    rows += _students("5k", [0.8], [0.01])
    (tmp_path / "full_labels_runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "full_labels_latency.jsonl").write_text(json.dumps({"latency_b1_ms": {}}) + "\n")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(full_labels, "run_task", must_not_train)
    full_labels.main(["--smoke", "--out", str(tmp_path), "--sizes", "5k", "--seeds", "0"])
    summary = json.loads((tmp_path / "full_labels.json").read_text())
    assert summary["students"][0]["distilled"]["test_acc"] == [0.81]
    assert summary["students"][0]["distilled"]["alpha"] == 0.9
    assert (tmp_path / "full_labels_curve.png").stat().st_size > 0
    assert len((tmp_path / "full_labels_runs.jsonl").read_text().splitlines()) == len(rows)


@pytest.mark.slow
def test_smoke_protocol_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    full_labels.main(["--smoke", "--out", str(out), "--sizes", "5k", "--seeds", "0", "1"])
    runs = [json.loads(line) for line in (out / "full_labels_runs.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in runs] == ["teacher"] + ["select"] * 4 + ["scratch", "distilled"] * 2 + ["teacher"]
    assert all("test_acc" not in r for r in runs if r["stage"] == "select")
    assert all(len(r["commit"].split()[0]) == 40 and r["command"].endswith("--smoke") for r in runs)
    summary = json.loads((out / "full_labels.json").read_text())
    teacher, small = summary["teacher"], summary["students"][0]
    assert teacher["seeds"] == [0, 1] and teacher["params"] == 4370 and teacher["latency_b1_ms"] > 0
    assert min(teacher["test_acc"]) > 0.7  # the smoke teacher learns digits
    choice = max(
        (r for r in runs if r["stage"] == "select"),
        key=lambda r: (r["val_acc"], -full_labels.GRID.index((r["temperature"], r["alpha"]))),
    )
    assert (small["distilled"]["temperature"], small["distilled"]["alpha"]) == (choice["temperature"], choice["alpha"])
    assert small["scratch"]["seeds"] == small["distilled"]["seeds"] == [0, 1]
    assert small["scratch"]["steps"] == small["distilled"]["steps"] > 0
    assert small["params"] == 4782 and small["latency_b1_ms"] > 0
    assert (out / "full_labels_curve.png").stat().st_size > 0
    before = (out / "full_labels_runs.jsonl").read_text()
    full_labels.main(["--smoke", "--out", str(out), "--sizes", "5k", "--seeds", "0", "1"])
    assert (out / "full_labels_runs.jsonl").read_text() == before


def test_the_section_is_rewritten_between_its_own_markers_only(tmp_path: Path) -> None:
    report = tmp_path / "RESULTS.md"
    other = "<!-- few_labels: written by benchmarks/few_labels.py --report -->\nkept\n<!-- few_labels: end -->"
    report.write_text(f"# results\n\n{other}\n")
    full_labels.write_section(report, [full_labels.SECTION_START, "first", full_labels.SECTION_END])
    full_labels.write_section(report, [full_labels.SECTION_START, "second", full_labels.SECTION_END])
    text = report.read_text()
    assert other in text and "second" in text and "first" not in text
    assert text.count(full_labels.SECTION_START) == 1
