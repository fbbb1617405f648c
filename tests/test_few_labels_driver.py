"""benchmarks/few_labels.py: the label budget holds in every stage, the issue's schema, resumability, a smoke run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import few_labels
from kd_lightning.data.batch import IGNORE_LABEL
from kd_lightning.models.factory import create_model


def _row(regime: str, model: str, seed: int, acc: float) -> dict:
    return dict(
        regime=regime,
        model=model,
        seed=seed,
        test_acc=acc,
        labels_used=100 if regime == "k10" else 1000,
        labelled_digest=f"subset{seed}",
        params=4370 if model != "teacher" else 2_962_506,
        size_bytes=1000,
        input_size=28 if model != "teacher" else 112,
        steps=4690,
        fit_s=1.0,
        command=few_labels.command_of(regime, model, seed, few_labels.Setting()),
        commit="abc",
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> few_labels.Setting:
    """The smoke setting with the teachers of k10 seeds 0 and 1 trained (seconds on digits)."""
    setting = few_labels.Setting(smoke=True, out=tmp_path_factory.mktemp("fl"))
    for seed in (0, 1):
        few_labels.fit_teacher("k10", seed, setting)
    return setting


def test_no_stage_reads_a_label_outside_the_budget(smoke: few_labels.Setting) -> None:
    positions = {}
    for seed in (0, 1):
        data = few_labels.data_module("k10", seed, smoke)
        labelled = few_labels.labelled_positions(data)
        assert torch.bincount(data.train_set.labels[labelled]).tolist() == [10] * 10
        positions[seed] = set(labelled.tolist())
        for model in few_labels.STUDENT_CONFIGS:
            cli = few_labels.student_cli("k10", model, seed, smoke)
            built = cli.datamodule
            # No validation labels: the split is empty and never run.
            assert len(built.val_set) == 0 and cli.trainer.limit_val_batches == 0
            train = built.train_set.labels
            if model == "scratch":  # the labelled images alone
                assert torch.equal(built.train_set.images, data.train_set.images[labelled])
                assert torch.equal(train, data.train_set.labels[labelled])
            else:  # the labels of the budget and IGNORE_LABEL everywhere else
                assert torch.equal(train, data.train_set.labels)
                assert set((train != IGNORE_LABEL).nonzero().flatten().tolist()) == positions[seed]
            if model in few_labels.TEACHER_TAUGHT:  # the seed's own teacher, trained on the seed's labels
                teacher = cli.model.hparams["teacher"]
                assert teacher["weights_path"] == str(smoke.teacher_weights("k10", seed))
                terms = [term["name"] for term in cli.model.hparams["losses"] or []]
                assert terms == (["pseudo_label"] if model.startswith("pseudo_label") else [])
            if model.endswith("_views"):  # the student's augmented view is the one the teacher's targets come from
                assert cli.model.hparams["teacher_cache"]["views"] == 2
                assert (built.crop_padding, built.hflip) == (4, True)
    assert positions[0] != positions[1]


def test_rows_record_the_budget_the_subset_and_the_commit(smoke: few_labels.Setting) -> None:
    rows = [few_labels.run_one("k10", "teacher", seed, smoke) for seed in (0, 1)]
    assert [r["labels_used"] for r in rows] == [100, 100]
    assert rows[0]["labelled_digest"] != rows[1]["labelled_digest"]
    assert len(rows[0]["commit"].split()[0]) == 40 and rows[0]["command"].endswith("--seeds 0 --smoke")
    protocol = few_labels.protocol(rows)
    assert protocol["labels_used"] == {"k10": 100, "k100": None} and protocol["subset_differs_per_seed"] is True
    assert few_labels.protocol([rows[0], rows[0] | {"seed": 1}])["subset_differs_per_seed"] is False


def test_a_teacher_missing_here_is_fitted_again_and_must_match_its_row(tmp_path: Path) -> None:
    setting = few_labels.Setting(smoke=True, out=tmp_path)
    runs = tmp_path / "few_labels_runs.jsonl"
    row = few_labels.run_one("k10", "teacher", 0, setting)
    runs.write_text(json.dumps(row) + "\n")
    weights = setting.teacher_weights("k10", 0)
    fitted = torch.load(weights, weights_only=True)
    weights.unlink()
    few_labels.restore_teacher("k10", 0, setting)  # a fresh checkout: the row is there, the weights are not
    refitted = torch.load(weights, weights_only=True)
    assert all(torch.equal(fitted[name], refitted[name]) for name in fitted)
    weights.unlink()
    runs.write_text(json.dumps(row | {"test_acc": row["test_acc"] + 0.01}) + "\n")
    with pytest.raises(RuntimeError, match="fitted again scores"):
        few_labels.restore_teacher("k10", 0, setting)
    assert not weights.exists()  # no student is taught by a teacher the table does not report
    with pytest.raises(FileNotFoundError, match="run --models teacher first"):
        few_labels.restore_teacher("k10", 1, setting)


def test_each_student_runs_its_own_configs_epochs() -> None:
    data = SimpleNamespace(train_set=object())  # only scratch's schedule reads the data
    setting = few_labels.Setting()
    epochs = {
        model: few_labels.student_schedule(model, data, setting)[1]  # type: ignore[arg-type]
        for model in few_labels.STUDENT_CONFIGS
        if model != "scratch"
    }
    assert epochs.pop("distilled_long") == epochs.pop("pseudo_label_long") == "30"
    assert set(epochs.values()) == {"10"}  # every other student: the distilled student's 4,690 steps


def test_head_standardisation_is_the_exact_feature_statistics() -> None:
    network = create_model("small_cnn", 10, width=4, feature_layers=("stage:-1",), head_norm=True)
    features = torch.randn(500, network.feature_dim) * 3 + 1
    few_labels.standardise_head(network, features)
    network.head.train()  # the driver's head training must not move the statistics
    few_labels.train_head(network, features[:20], torch.arange(20) % 10, steps=5, seed=0)
    head = network.head
    expected = (features - features.mean(0)) / (features.var(0, unbiased=False) + head.norm.eps).sqrt()
    assert torch.allclose(head(features), expected @ head.weight.T + head.bias, atol=1e-5)


def test_the_teacher_as_run_drops_only_what_its_probe_never_reads() -> None:
    teacher = create_model(
        "efficientnet_lite0", 10, input_size=32, feature_layers=("stage:3", "stage:4"), head_norm=True
    ).eval()
    pruned = few_labels.as_run(teacher)
    dropped = sum(
        p.numel() for name, p in teacher.named_parameters() if name.startswith(("backbone.conv_head.", "backbone.bn2."))
    )
    assert dropped == 320 * 1280 + 2 * 1280  # the 1x1 conv to 1,280 channels and its BatchNorm
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in teacher.parameters()) - dropped


def test_summary_has_the_issue_schema_with_seeds_aligned() -> None:
    rows = [_row("k100", m, s, 0.5 + 0.1 * s) for m in ("scratch", "distilled") for s in (1, 0)]
    rows += [_row("k100", "distilled", 2, 0.9), _row("k10", "teacher", 0, 0.7)]
    summary = few_labels.summarise(rows, {"teacher": {"min": 10.0, "median": 11.0, "max": 14.0}})
    assert set(summary) == {"protocol", "k100", "k10"}
    assert set(summary["protocol"]) >= {"labels_used", "selection", "subset_differs_per_seed", "seeds"}
    assert summary["protocol"]["labels_used"] == {"k10": 100, "k100": 1000}
    distilled = summary["k100"]["distilled"]
    assert distilled["seeds"] == [0, 1, 2] and distilled["test_acc"] == [0.5, 0.6, 0.9]
    assert {"test_acc", "params", "latency_b1_ms", "command"} <= set(distilled)
    assert distilled["command"].endswith("--models distilled --seeds 0 1 2")
    assert summary["k10"]["teacher"]["latency_b1_ms"] == 11.0
    assert summary["k10"]["teacher"]["latency_b1_ms_range"] == [10.0, 14.0]
    assert few_labels.paired(summary, "k100", "distilled", "scratch") == [(0, 0.0), (1, 0.0)]
    rows += [_row("k100", "pseudo_label", 0, 0.4), _row("k100", "pseudo_label", 1, 0.7)]
    verdicts = few_labels.verdict_lines(few_labels.summarise(rows, {}))
    assert verdicts == [
        "- k100: distilled vs scratch: level on every finished seed (2 of 5 seeds finished; mean +0.00 points).",
        "- k100: distilled vs pseudo_label: ahead on 1, behind on 1 (2 of 5 seeds finished; mean +0.00 points).",
    ]


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

    monkeypatch.setattr(few_labels, "run_one", must_not_train)
    few_labels.main(["--smoke", "--out", str(tmp_path), "--regimes", "k10", "--seeds", "0", "1"])
    summary = json.loads((tmp_path / "few_labels.json").read_text())
    assert summary["k10"]["distilled"]["test_acc"] == [0.5, 0.5]
    assert (tmp_path / "few_labels_accuracy.png").stat().st_size > 0
    assert len(runs.read_text().splitlines()) == 2 * len(few_labels.MODELS)


@pytest.mark.slow
def test_smoke_protocol_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    few_labels.main(["--smoke", "--out", str(out), "--regimes", "k10", "--seeds", "0", "1"])
    few_labels.main(["--smoke", "--out", str(out), "--latency"])
    summary = json.loads((out / "few_labels.json").read_text())
    assert summary["protocol"]["subset_differs_per_seed"] is True
    assert summary["protocol"]["labels_used"]["k10"] == 100
    for model in few_labels.MODELS:
        entry = summary["k10"][model]
        assert entry["seeds"] == [0, 1] and len(entry["test_acc"]) == 2
        assert entry["params"] > 0 and entry["latency_b1_ms"] > 0
    steps = {model: summary["k10"][model]["steps"] for model in few_labels.MODELS if model != "teacher"}
    assert min(steps.values()) >= steps["distilled"]
    rows = (out / "few_labels_runs.jsonl").read_text().splitlines()
    few_labels.main(["--smoke", "--out", str(out), "--regimes", "k10", "--seeds", "0", "1"])
    assert (out / "few_labels_runs.jsonl").read_text().splitlines() == rows
