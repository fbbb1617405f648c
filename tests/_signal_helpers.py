"""A callback that sends this process a signal at a given step, as a scheduler or a Ctrl+C would."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send ``signum`` to this process in the middle of training step ``step`` (before its optimizer step)."""

    def __init__(self, step: int, signum: int, times: int = 1) -> None:
        self.step = step
        self.signum = signum
        self.times = times

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)
