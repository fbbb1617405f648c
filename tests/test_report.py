import json
import math

import pytest
import torch

from kd_lightning.cli import main
from kd_lightning.loading import load_trained
from kd_lightning.report.measure import count_macs, cpu_latency_ms, quality
from tests._pipeline_helpers import digits_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return digits_checkpoints(tmp_path_factory.mktemp("digits"))


def test_report_cli_writes_markdown_plots_and_json(checkpoints, tmp_path, capsys):
    teacher, student = checkpoints
    out = tmp_path / "report"
    main(
        ["report", "--teacher", str(teacher), "--students", str(student), str(student)]
        + ["--data", "digits", "--output", str(out), "--latency_repeats", "3", "--threads", "1"]
    )
    assert "report written to" in capsys.readouterr().out
    payload = json.loads((out / "report.json").read_text())
    assert payload["test_images"] == 359
    models = payload["models"]
    assert [m["name"] for m in models] == ["teacher", "student", "student_2"]
    assert [m["role"] for m in models] == ["teacher", "student", "student"]
    teacher_row, student_row = models[0], models[1]
    for row in models:
        assert 0.0 <= row["test_acc"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
        assert row["params"] > 0 and row["macs"] > 0 and row["size_bytes"] > 0
        assert all(v > 0 and math.isfinite(v) for v in row["latency_ms"].values())
        assert set(row["latency_ms"]) == {"batch_1", "batch_64"}
    assert teacher_row["test_acc"] > 0.5  # 2 epochs on digits already separate the classes
    assert teacher_row["agreement"] is None
    assert 0.0 <= student_row["agreement"] <= 1.0 and student_row["kl_from_teacher"] >= 0.0
    assert student_row["params"] < teacher_row["params"] and student_row["macs"] < teacher_row["macs"]
    assert models[2]["test_acc"] == student_row["test_acc"]  # same checkpoint, same numbers
    for name in ("report.md", "accuracy_vs_latency.png", "accuracy.png", "params.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "weights" / "student.pt").stat().st_size == student_row["size_bytes"]
    markdown = (out / "report.md").read_text()
    assert "| teacher | teacher | " in markdown and "accuracy_vs_latency.png" in markdown


def test_quality_against_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    teacher = torch.tensor([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]])
    scores = quality(logits, torch.tensor([0, 1, 1]), teacher)
    assert scores["test_acc"] == pytest.approx(2 / 3)
    assert scores["agreement"] == pytest.approx(2 / 3)
    confidence = 1 / (1 + math.exp(-2.0))  # all three predictions in one bin, two right
    assert scores["ece"] == pytest.approx(abs(confidence - 2 / 3), abs=1e-6)


def test_macs_of_a_linear_layer_and_latency_is_positive():
    layer = torch.nn.Linear(8, 3)
    assert count_macs(layer, torch.zeros(5, 8)) == 8 * 3  # one sample, bias adds are not MACs
    assert cpu_latency_ms(layer, torch.zeros(1, 8), batch_size=4, warmup=1, repeats=3) > 0


def test_a_finetuner_checkpoint_from_before_the_network_rename_still_loads(checkpoints, tmp_path):
    """Finetuner checkpoints once named their ModelSpec `backbone`; report and export still rebuild them."""
    teacher, _ = checkpoints
    ckpt = torch.load(teacher, weights_only=True)
    ckpt["hyper_parameters"]["backbone"] = ckpt["hyper_parameters"].pop("network")
    old = tmp_path / "old_teacher.ckpt"
    torch.save(ckpt, old)
    loaded, current = load_trained(old), load_trained(teacher)
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(loaded.network(x), current.network(x))
