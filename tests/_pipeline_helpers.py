"""Tiny digits teacher and student checkpoints, made in seconds, for the report and export tests."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner, SupervisedModule
from tests.conftest import make_trainer


def _fit(module: SupervisedModule, path: Path, epochs: int) -> Path:
    trainer = make_trainer(max_epochs=epochs, default_root_dir=path.parent)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    trainer.save_checkpoint(path)
    return path


def digits_checkpoints(folder: Path) -> tuple[Path, Path]:
    """(teacher, distilled student) Lightning checkpoints: a width-16 CNN for 2 epochs, a width-4 one for 1.

    One thread: on a machine shared with other jobs, two threads of tiny convolutions wait on each
    other (measured here: 4 s with one thread, 64 s with two, under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _teacher_and_student(folder)
    finally:
        torch.set_num_threads(threads)


def _teacher_and_student(folder: Path) -> tuple[Path, Path]:
    L.seed_everything(0, verbose=False)
    adam = lambda params: torch.optim.Adam(params, lr=3e-3)  # noqa: E731
    teacher = FrozenBackboneFinetuner(ModelSpec("small_cnn", kwargs={"width": 16}), 10, "full", optimizer=adam)
    teacher_ckpt = _fit(teacher, folder / "teacher.ckpt", epochs=2)
    teacher_spec = ModelSpec("small_cnn", weights_path=str(teacher_ckpt), kwargs={"width": 16})
    student = DistillationModule(ModelSpec("small_cnn", kwargs={"width": 4}), teacher_spec, 10, optimizer=adam)
    return teacher_ckpt, _fit(student, folder / "student.ckpt", epochs=1)
