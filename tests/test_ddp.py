"""Two-process CPU DDP (gloo) of the distiller: teacher outside the gradient sync, synced metrics, rank-0 files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_lightning.models import create_model

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "_ddp_helpers.py"


def _run(mode: str, out: Path, teacher: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(HELPER), mode, str(out), str(teacher)], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(p, weights_only=True) for p in sorted(out.glob("rank*.pt"))]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_a_single_process_run(tmp_path):
    torch.manual_seed(3)
    teacher = tmp_path / "teacher.pt"
    torch.save(create_model("small_cnn", 10, width=8).state_dict(), teacher)
    ranks = _run("ddp", tmp_path / "ddp", teacher)
    (single,) = _run("single", tmp_path / "single", teacher)

    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank in ranks:
        assert rank["wrapped"] == "DistributedDataParallel"
        assert rank["synced"] and not any(n.startswith("teacher.") for n in rank["synced"])
        assert any(n.startswith("teacher.") for n in rank["ignored"])
        assert rank["teacher_grads"] == [] and rank["teacher_unchanged"]
    # Metrics are reduced across ranks: both ranks report the same numbers.
    assert ranks[0]["val"] == ranks[1]["val"]
    assert ranks[0]["test"] == ranks[1]["test"]
    # Only rank 0 wrote checkpoints and logs (one of each, no per-rank copies).
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "ckpt").iterdir())
    assert ckpts == ["epoch=3-step=84.ckpt", "last.ckpt"], ckpts
    assert [p.name for p in (tmp_path / "ddp" / "logs").iterdir()] == ["version_0"]
    # The same global batch: accuracy within a few points of the single-process run.
    assert abs(ranks[0]["test"]["test/acc"] - single["test"]["test/acc"]) < 0.08, (ranks[0]["test"], single["test"])
