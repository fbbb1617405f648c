"""Settings that would make a fit run to the end and keep nothing: refused before the first batch."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from kd_lightning.errors import ConfigError


class MonitoredMetricCheck(Callback):
    """Refuse a fit whose ``ModelCheckpoint`` or ``EarlyStopping`` follows a validation metric that no
    validation will log (``val_fraction: 0`` without a validation split, ``limit_val_batches: 0``).

    Such a run would train to the end, write no checkpoint and exit 0, leaving an earlier run's
    ``best.ckpt`` in the folder to be taken for this one's.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reason = _no_validation(trainer)
        if reason is None:
            return
        watchers = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint | EarlyStopping)]  # type: ignore[attr-defined]
        for callback in watchers:
            if callback.monitor is not None and callback.monitor.startswith("val"):
                raise ConfigError(
                    f"{type(callback).__name__} monitors {callback.monitor!r}, but this fit has no validation data "
                    f"({reason}), so it would never be logged: give validation data (data.val_fraction > 0 or a "
                    "validation split) or monitor a training metric (e.g. train/loss)"
                )


def _no_validation(trainer: L.Trainer) -> str | None:
    if trainer.limit_val_batches == 0:
        return "limit_val_batches is 0"
    datamodule = getattr(trainer, "datamodule", None)
    val_set = getattr(datamodule, "val_set", "unknown")
    if val_set is None or (val_set != "unknown" and len(val_set) == 0):
        return "the validation set is empty: val_fraction 0 and no validation split"
    return None
