"""The student's checkpoint names its teacher (spec + content hash) and refuses another one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.models import create_model
from kd_lightning.models.fingerprint import state_dict_sha256
from kd_lightning.models.weights import CheckpointError
from kd_lightning.modules import DistillationModule


def test_hash_depends_on_content_not_on_file_or_copy():
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, width=4)
    copy = create_model("small_cnn", 10, width=4)
    copy.load_state_dict(model.state_dict())
    assert state_dict_sha256(model) == state_dict_sha256(copy)
    with torch.no_grad():
        copy.head.bias[0] += 1e-6
    assert state_dict_sha256(model) != state_dict_sha256(copy)


def _teacher_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(create_model("small_cnn", 10, width=8).state_dict(), path)
    return path


def _module(teacher_path: Path) -> DistillationModule:
    teacher = {"name": "small_cnn", "kwargs": {"width": 8}, "weights_path": str(teacher_path)}
    return DistillationModule({"name": "small_cnn", "kwargs": {"width": 4}}, teacher, num_classes=10)


def _trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def test_checkpoint_records_the_teacher_and_refuses_a_changed_one(tmp_path):
    teacher_path = _teacher_file(tmp_path / "teacher.pt", seed=1)
    module = _module(teacher_path)
    trainer = _trainer(tmp_path)
    trainer.fit(module, DigitsDataModule())
    ckpt_path = trainer.checkpoint_callback.best_model_path
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["teacher"]["spec"]["weights_path"] == str(teacher_path)
    assert ckpt["teacher"]["sha256"] == state_dict_sha256(module.teacher.network)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])

    # The same teacher, rebuilt from its spec: evaluation works.
    _trainer(tmp_path).test(_module(teacher_path), DigitsDataModule(), ckpt_path=ckpt_path)
    # The file was overwritten by another teacher: refused, with both hashes.
    _teacher_file(teacher_path, seed=2)
    with pytest.raises(CheckpointError, match="teacher differs from the one this checkpoint was trained with"):
        _trainer(tmp_path).test(_module(teacher_path), DigitsDataModule(), ckpt_path=ckpt_path)
