"""Recompute the trained network's BatchNorm statistics before it is validated and saved."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

from kd_lightning.data.calibration import training_batches
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.errors import ConfigError
from kd_lightning.models.batchnorm import recalibrate_batchnorm

log = logging.getLogger(__name__)


class PreciseBatchNorm(Callback):
    """Recompute the BatchNorm statistics of the trained network ("precise BN") before it is judged.

    BatchNorm's running averages lag behind the weights (see :mod:`kd_lightning.models.batchnorm`).
    They are recomputed over ``num_batches`` training batches before validation in every
    ``every_n_epochs``-th and in the last epoch (so the metrics, the checkpoint saved from them and
    a teacher handed to distillation all use them), at the end of an epoch without validation, and
    at the end of training if the weights changed since. Only the layers the module trains are
    touched, and training itself is unchanged (train-mode BatchNorm uses batch statistics).

    Args:
        num_batches: training batches to average over (at the training batch size).
        every_n_epochs: also recalibrate every this many epochs (``None``: only in the last one).
        seed: seed of the batches drawn (a generator of its own: the training RNG is untouched).
    """

    def __init__(self, num_batches: int = 64, every_n_epochs: int | None = 1, seed: int = 0) -> None:
        if num_batches < 1:
            raise ConfigError(f"PreciseBatchNorm num_batches must be >= 1, got {num_batches}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ConfigError(f"PreciseBatchNorm every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        self.num_batches = num_batches
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self._calibrated_at_step: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            train_set = getattr(trainer.datamodule, "train_set", None)  # type: ignore[attr-defined]
            if not isinstance(train_set, TensorImageDataset):
                raise ConfigError(
                    "PreciseBatchNorm needs a kd_lightning image DataModule with its training images "
                    f"in memory, got {type(trainer.datamodule).__name__}"  # type: ignore[attr-defined]
                )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._due(trainer):
            self._recalibrate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._due(trainer) and self._calibrated_at_step != trainer.global_step:
            self._recalibrate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._calibrated_at_step != trainer.global_step:
            self._recalibrate(trainer, pl_module)

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs - 1
        return last or (self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0)

    def _recalibrate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        batches = training_batches(trainer.datamodule, self.num_batches, self.seed, pl_module.device)  # type: ignore[attr-defined]
        used = recalibrate_batchnorm(pl_module, batches)
        self._calibrated_at_step = trainer.global_step
        log.info(
            f"precise BN: BatchNorm statistics recomputed over {used} training batches (step {trainer.global_step})"
        )
