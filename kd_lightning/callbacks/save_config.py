"""Save the resolved CLI config next to the logs and into the experiment tracker's run config."""

from __future__ import annotations

from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class LoggerSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer that also puts the whole resolved config in the W&B run,
    and writes only once the run has started.

    Lightning logs only the modules' ``save_hyperparameters``; the trainer, callbacks, optimizer and
    data settings that make a run reproducible would be missing from the dashboard, so the full
    config (``trainer.*``, ``model.*``, ``data.*``, ``seed_everything``, ...) is added as nested keys.

    Lightning writes ``config.yaml`` in ``setup``, before the data is read and the first batch has
    run; a run refused there (bad data, channels that do not fit the model) would already have
    replaced the ``config.yaml`` of the earlier run in that folder. Here it is written when
    training (or evaluation) starts, after the sanity check.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Deferred to the start hooks below."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            super().setup(trainer, pl_module, "validate")

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "test")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().setup(trainer, pl_module, "predict")

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            config = self.resolved_config()
            for logger in loggers:
                logger.log_hyperparams(config)

    def resolved_config(self) -> dict[str, Any]:
        """The config as plain nested types (the same content as the saved ``config.yaml``)."""
        return yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_validation=True))
