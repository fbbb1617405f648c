"""Training metrics are accumulated every step and logged once per epoch, over the whole epoch."""

from __future__ import annotations

import csv
import functools

import torch
from lightning.pytorch.loggers import CSVLogger

from kd_lightning.data import DigitsDataModule
from kd_lightning.modules import FrozenBackboneFinetuner
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
