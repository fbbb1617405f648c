"""A teacher's checkpoint records its class order; data that numbers the classes otherwise is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import ConfigError
from kd_lightning.models import ModelSpec, read_weights_file
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from tests.conftest import TEACHER_SPEC, make_trainer

DIGIT_NAMES = [str(d) for d in range(10)]
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})


def _checkpoint(path: Path, state: dict[str, torch.Tensor], **extra: object) -> ModelSpec:
    torch.save({"state_dict": {f"network.{k}": v for k, v in state.items()}, **extra}, path)
    return ModelSpec(TEACHER_SPEC.name, weights_path=str(path), kwargs=TEACHER_SPEC.kwargs)


def test_a_trainer_checkpoint_records_the_data_class_order(tmp_path: Path) -> None:
    module = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    trainer = make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(module, DigitsDataModule(batch_size=32))
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    assert read_weights_file(tmp_path / "teacher.ckpt").class_names == DIGIT_NAMES


def test_a_text_checkpoint_without_the_record_falls_back_to_its_data_labels(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "datamodule_hyper_parameters": {"labels": ["b", "a"]}}, path)
    assert read_weights_file(path).class_names == ["b", "a"]
    torch.save({"w": torch.zeros(1)}, path)
    assert read_weights_file(path).class_names is None


def test_data_numbering_the_teacher_classes_otherwise_is_refused(tmp_path: Path) -> None:
    state = TEACHER_SPEC.build(10).state_dict()
    spec = _checkpoint(tmp_path / "teacher.ckpt", state, class_names=[*DIGIT_NAMES[1:], "0"])
    module = DistillationModule(STUDENT, spec, num_classes=10)
    with pytest.raises(ConfigError, match=r"another order than the data's \(class 0 is '1' to the teacher but '0'"):
        make_trainer(limit_train_batches=1, limit_val_batches=0).fit(module, DigitsDataModule(batch_size=32))


def test_other_class_names_warn_and_the_same_order_runs(tmp_path: Path) -> None:
    state = TEACHER_SPEC.build(10).state_dict()
    renamed = _checkpoint(tmp_path / "renamed.ckpt", state, class_names=[f"digit {d}" for d in range(10)])
    with pytest.warns(UserWarning, match="other class names than the data's .class 0 is 'digit 0'"):
        make_trainer(limit_train_batches=1, limit_val_batches=0).fit(
            DistillationModule(STUDENT, renamed, num_classes=10), DigitsDataModule(batch_size=32)
        )
    same = _checkpoint(tmp_path / "same.ckpt", state, class_names=DIGIT_NAMES)
    trainer = make_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(DistillationModule(STUDENT, same, num_classes=10), DigitsDataModule(batch_size=32))
    assert trainer.global_step == 1


def test_every_teacher_of_an_ensemble_is_checked(tmp_path: Path) -> None:
    state = TEACHER_SPEC.build(10).state_dict()
    good = _checkpoint(tmp_path / "good.ckpt", state, class_names=DIGIT_NAMES)
    bad = _checkpoint(tmp_path / "bad.ckpt", state, class_names=DIGIT_NAMES[::-1])
    module = DistillationModule(STUDENT, [good, bad], num_classes=10)
    with pytest.raises(ConfigError, match="bad.ckpt was trained with its classes in another order"):
        make_trainer(limit_train_batches=1, limit_val_batches=0).fit(module, DigitsDataModule(batch_size=32))
