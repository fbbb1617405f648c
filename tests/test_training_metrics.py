"""Training metrics are accumulated every step and logged once per epoch; step values where they are read."""

from __future__ import annotations

import csv
import functools

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from kd_lightning.data import DigitsDataModule
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner, base
from tests.conftest import make_trainer


def test_train_accuracy_is_over_every_batch_of_the_epoch_and_logged_once_per_epoch(tmp_path) -> None:
    # lr 0 and a network without BatchNorm: the accuracy over the epoch is the network's accuracy on the
    # whole training split, whatever the batch order.
    module = FrozenBackboneFinetuner("mlp", 10, strategy="full", optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    digits = DigitsDataModule(batch_size=64)
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=1)
    trainer.fit(module, digits)

    images = digits.train_set.images.float() / 255
    with torch.no_grad():
        expected = (module.network.eval()(images).argmax(-1) == digits.train_set.labels).float().mean()
    torch.testing.assert_close(trainer.callback_metrics["train/acc"], expected)
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    epoch_rows = [row for row in rows if row["train/acc"]]
    assert [int(row["epoch"]) for row in epoch_rows] == [0, 1]
    assert all(row["train/acc_top5"] for row in epoch_rows)
    assert sum(1 for row in rows if row["train/loss"]) == trainer.global_step  # log_every_n_steps=1


def _distill_log(tmp_path, name: str, teacher_spec) -> tuple[list[dict[str, str]], dict[str, float]]:
    L.seed_everything(0, verbose=False)
    module = DistillationModule("small_cnn", teacher_spec, num_classes=10)
    logger = CSVLogger(tmp_path, name=name, version=0)
    trainer = make_trainer(max_epochs=2, limit_train_batches=7, logger=logger, log_every_n_steps=3)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    with open(tmp_path / name / "version_0" / "metrics.csv") as handle:
        rows = [
            {k: v for k, v in row.items() if k.startswith("train/") or k in ("step", "epoch")}
            for row in csv.DictReader(handle)
        ]
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return rows, final


def test_step_values_reach_the_loggers_as_if_logged_every_step(tmp_path, teacher_spec, monkeypatch) -> None:
    rows, final = _distill_log(tmp_path, "gated", teacher_spec)
    monkeypatch.setattr(base, "_step_values_read", lambda trainer: True)
    every_step_rows, every_step_final = _distill_log(tmp_path, "every_step", teacher_spec)
    assert rows == every_step_rows
    assert final == every_step_final
    assert {"train/loss", "train/ce", "train/kd", "train/acc"} <= set(final)
    assert sum(1 for row in rows if row["train/kd"]) == 4  # steps 3, 6, 9 and 12 of 14


def test_a_run_stopped_by_max_steps_mid_epoch_keeps_its_last_step_values() -> None:
    # No logger and no progress bar read any step, but callback_metrics must hold the run's last one.
    module = FrozenBackboneFinetuner("mlp", 10, strategy="full")
    trainer = make_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
