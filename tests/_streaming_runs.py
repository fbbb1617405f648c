"""The streaming tests' child processes (``tests/_streaming_helpers.py``): one fit, or one SIGKILLed and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "_streaming_helpers.py"


def run_helper(config: dict, timeout: float | None = None) -> subprocess.CompletedProcess:
    """One fit of ``config`` in a child process (its own ranks under DDP), output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(HELPER), json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


def straight_and_resumed(config: dict, root: Path, kill_at: int, ranks: int = 1) -> tuple[list[dict], list[dict]]:
    """``config`` fitted straight (``root/straight``) and SIGKILLed after step ``kill_at`` then resumed
    (``root/killed``): each rank's results of both runs, for a bit-identical comparison."""
    straight = run_helper({**config, "root": str(root / "straight")})
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_helper({**config, "root": str(root / "killed"), "kill_at": kill_at})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_helper({**config, "root": str(root / "killed"), "resume": True})
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def results(run: str) -> list[dict]:
        return [torch.load(root / run / f"rank{rank}.pt", weights_only=True) for rank in range(ranks)]

    return results("straight"), results("killed")
