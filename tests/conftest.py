"""Shared fixtures: fast trainers and a small trained digits teacher, all offline and seeded."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import FrozenBackboneFinetuner

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
# The test networks are tiny: one thread is faster than two (no oversubscription) and repeatable. Child
# processes (SIGKILL, DDP, notebook and CLI tests) inherit the setting, so the slow suite can run two tests
# side by side on two cores without each child spinning two threads.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

TEACHER_SPEC = ModelSpec("small_cnn", kwargs={"width": 8})


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Wrap ``module.name`` so every call appends to the returned list (how often a cache computed)."""
    calls: list[int] = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


@contextmanager
def hang_guard(seconds: int = 30) -> Iterator[None]:
    """Fail with ``TimeoutError`` instead of hanging: for code whose regression is a wait that never ends."""

    def give_up(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def make_trainer(**overrides) -> L.Trainer:
    """A quiet CPU trainer for tests: no logger, no checkpoints, no progress bar."""
    options = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    options.update(overrides)
    return L.Trainer(**options)


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


@pytest.fixture
def digits() -> DigitsDataModule:
    return DigitsDataModule(batch_size=64)


@pytest.fixture(scope="session")
def digits_teacher_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained for two epochs on digits, saved as a plain state dict."""
    L.seed_everything(0, verbose=False)
    teacher = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    make_trainer(max_epochs=2).fit(teacher, DigitsDataModule(batch_size=64))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.network.state_dict(), path)
    return path


@pytest.fixture
def teacher_spec(digits_teacher_weights: Path) -> ModelSpec:
    return ModelSpec(TEACHER_SPEC.name, weights_path=str(digits_teacher_weights), kwargs=TEACHER_SPEC.kwargs)


@pytest.fixture
def teacher_path(tmp_path: Path) -> str:
    """A small digits teacher's state dict on disk, for the fits that run in child processes."""
    from tests._resume_helpers import make_teacher

    make_teacher(tmp_path / "teacher.pt")
    return str(tmp_path / "teacher.pt")
