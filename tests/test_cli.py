"""End to end through the command line: the digits pipeline and the quick-start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kd_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
SHORT = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def test_teacher_then_distill_then_test_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "teacher.yaml"), *SHORT])
    teacher_ckpt = tmp_path / "runs/digits/teacher/best.ckpt"
    assert teacher_ckpt.is_file()

    # distill.yaml finds the teacher at the path teacher.yaml wrote: no path editing.
    main(["fit", "--config", str(CONFIGS / "distill.yaml"), *SHORT])
    student_ckpt = tmp_path / "runs/digits/distill/best.ckpt"
    state = torch.load(student_ckpt, weights_only=True)["state_dict"]
    assert not any(k.startswith("teacher.") for k in state)

    main(["test", "--config", str(CONFIGS / "distill.yaml"), *SHORT, "--ckpt_path", str(student_ckpt)])
    main(["fit", "--config", str(CONFIGS / "finetune.yaml"), *SHORT])
    assert (tmp_path / "runs/digits/finetune/best.ckpt").is_file()


def test_quickstart_writes_results_json(tmp_path: Path) -> None:
    main(["quickstart", "--output", str(tmp_path), "--seeds", "0", "--student_epochs", "1", "--teacher_epochs", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    for name in ("teacher", "student_scratch", "student_distilled"):
        assert 0.0 <= results[name]["test_acc"] <= 1.0
        assert results[name]["params"] > 0
    assert results["teacher"]["params"] >= 10 * results["student_distilled"]["params"]
    assert results["student_distilled"]["params"] == results["student_scratch"]["params"]
