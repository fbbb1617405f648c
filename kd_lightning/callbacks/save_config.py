"""Save the resolved CLI config next to the logs and into the experiment tracker's run config."""

from __future__ import annotations

from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger


class LoggerSaveConfigCallback(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` writer that also puts the whole resolved config in the W&B run.

    Lightning logs only the modules' ``save_hyperparameters``; the trainer, callbacks, optimizer and
    data settings that make a run reproducible would be missing from the dashboard, so the full
    config (``trainer.*``, ``model.*``, ``data.*``, ``seed_everything``, ...) is added as nested keys.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            config = self.resolved_config()
            for logger in loggers:
                logger.log_hyperparams(config)

    def resolved_config(self) -> dict[str, Any]:
        """The config as plain nested types (the same content as the saved ``config.yaml``)."""
        return yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_validation=True))
