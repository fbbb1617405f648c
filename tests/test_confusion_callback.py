import csv

import lightning as L
import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import RichProgressBar

from kd_lightning.callbacks import ConfusionMatrixLogger
from kd_lightning.callbacks.confusion import confusion_matrix, per_class_table
from kd_lightning.callbacks.interrupt import GracefulInterrupt
from kd_lightning.callbacks.run_checks import MonitoredMetricCheck
from kd_lightning.cli import default_callbacks
from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner


def test_confusion_matrix_and_per_class_table_by_hand():
    targets = torch.tensor([0, 0, 1, 1, 2])
    student = torch.tensor([0, 1, 1, 1, 0])
    teacher = torch.tensor([0, 0, 1, 0, 2])
    assert confusion_matrix(targets, student, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    columns, rows = per_class_table(targets, student, teacher, ["a", "b", "c"])
    assert columns == ["class", "support", "student_acc", "teacher_acc", "student_minus_teacher"]
    assert rows == [["a", 2, 0.5, 1.0, -0.5], ["b", 2, 1.0, 0.5, 0.5], ["c", 1, 0.0, 1.0, -1.0]]


def test_without_wandb_writes_png_and_csv_under_the_log_dir(tmp_path):
    torch.manual_seed(0)
    teacher_weights = tmp_path / "teacher.pt"
    torch.save(ModelSpec("small_cnn", kwargs={"width": 4}).build(10).state_dict(), teacher_weights)
    module = DistillationModule(
        ModelSpec("small_cnn", kwargs={"width": 2}),
        ModelSpec("small_cnn", weights_path=str(teacher_weights), kwargs={"width": 4}),
        num_classes=10,
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=2,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ConfusionMatrixLogger()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DigitsDataModule())
    trainer.test(module, DigitsDataModule(), verbose=False)
    for stage, images in (("val", 128), ("test", 64)):
        assert (tmp_path / f"{stage}_confusion_matrix.png").stat().st_size > 0
        with open(tmp_path / f"{stage}_per_class.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["class"] for r in rows] == [str(d) for d in range(10)]
        assert sum(int(r["support"]) for r in rows) == images  # every evaluated image, no sanity-check batch
        assert "teacher_acc" in rows[0]


def test_finetuner_table_has_no_teacher_column(tmp_path):
    module = FrozenBackboneFinetuner(ModelSpec("small_cnn", kwargs={"width": 2}), num_classes=10, strategy="full")
    trainer = L.Trainer(
        limit_test_batches=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[ConfusionMatrixLogger(("test",))],
        default_root_dir=tmp_path,
    )
    trainer.test(module, DigitsDataModule(), verbose=False)
    with open(tmp_path / "test_per_class.csv") as handle:
        assert next(csv.reader(handle)) == ["class", "support", "student_acc"]


def test_cli_defaults_rich_progress_bar_and_confusion_matrix():
    # The run guards (signals as outcomes, monitored metrics that will be logged) come first in every run.
    guards = [GracefulInterrupt, MonitoredMetricCheck]
    assert [type(c) for c in default_callbacks(None, [])] == [*guards, RichProgressBar, ConfusionMatrixLogger]
    assert [type(c) for c in default_callbacks(False, [])] == [*guards, ConfusionMatrixLogger]
    # A config's own progress bar and confusion-matrix callback win (parsed configs hold class paths).
    configured = [
        Namespace(class_path="lightning.pytorch.callbacks.TQDMProgressBar"),
        Namespace(class_path="kd_lightning.callbacks.ConfusionMatrixLogger"),
    ]
    assert [type(c) for c in default_callbacks(True, configured)] == guards


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="stages"):
        ConfusionMatrixLogger(("train",))
