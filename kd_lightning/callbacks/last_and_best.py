"""Report the last epoch's and the best epoch's accuracy side by side when a fit ends."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class LastAndBestAccuracy(Callback):
    """Record ``monitor`` after every validation and report last and best at the end of the fit.

    Papers disagree on which number they publish: RepDistiller reports the last epoch, mdistiller
    the best epoch. Under ``validate_on_test`` (the references' protocol) the validation split is
    the test split, so "best" is selected on the test set and is optimistic; "last" is the honest
    number. Both come from the validations the run does anyway: no extra evaluation.

    At the end of ``fit`` it prints one line and logs ``<monitor>_last``, ``<monitor>_best`` and
    ``<monitor>_best_epoch`` to every logger; :attr:`summary` holds the same values. The history
    is saved in checkpoints, so a resumed run reports over all its epochs. Epochs are 0-based, as in
    Lightning's checkpoint names (the last of 240 epochs is epoch 239).

    Args:
        monitor: the logged metric to follow (higher is better).
    """

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self.history: dict[int, float] = {}
        self.summary: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: the epoch's metrics are computed by then.
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.history[trainer.current_epoch] = float(trainer.callback_metrics[self.monitor])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history:
            rank_zero_warn(f"LastAndBestAccuracy: no {self.monitor!r} was logged, so there is nothing to report")
            return
        last_epoch = max(self.history)
        best_epoch = max(self.history, key=lambda epoch: (self.history[epoch], -epoch))
        self.summary = {
            f"{self.monitor}_last": self.history[last_epoch],
            f"{self.monitor}_best": self.history[best_epoch],
            f"{self.monitor}_best_epoch": float(best_epoch),
        }
        for logger in trainer.loggers:
            logger.log_metrics(self.summary, step=trainer.global_step)
        rank_zero_info(
            f"{self.monitor}: last epoch ({last_epoch}) {self.history[last_epoch]:.4f} | "
            f"best epoch ({best_epoch}) {self.history[best_epoch]:.4f} (chosen on this split)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "history": dict(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(epoch): float(value) for epoch, value in state_dict["history"].items()}
