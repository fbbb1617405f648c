"""Stop a run whose loss became NaN or infinite, naming the step and the loss terms at fault."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kd_lightning.errors import NonFiniteLossError


class NonFiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` when the training loss is not finite.

    Reading a GPU tensor on the host waits for the GPU, so every step a device-side flag records
    the first step with a non-finite loss (no synchronisation), and the flag is read every
    ``check_every_n_steps`` steps. The message names that first step and the non-finite
    ``train/<term>`` values at the check (a NaN in the weights stays, so they name the culprit).

    Args:
        check_every_n_steps: how often the flag is read on the host (``None``: 1 on CPU, else 20).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        step = trainer.fit_loop.total_batch_idx
        every = self.check_every_n_steps or (1 if loss.device.type == "cpu" else 20)
        if every == 1:  # read every step: the value itself, no device-side flag to keep
            if not torch.isfinite(loss.detach()).all():
                self._raise(trainer, pl_module, step, batch_idx)
            return
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()).all()
        unset = self._first_bad_step < 0
        self._first_bad_step = torch.where(
            bad_now & unset, torch.tensor(step, device=loss.device), self._first_bad_step
        )
        if (batch_idx + 1) % every == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._check(trainer, pl_module, batch_idx)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> None:
        if self._first_bad_step is None:  # no training step has run yet
            return
        first_bad = int(self._first_bad_step.item())  # the one host sync per check
        if first_bad >= 0:
            self._raise(trainer, pl_module, first_bad, batch_idx)

    def _raise(self, trainer: L.Trainer, pl_module: L.LightningModule, first_bad: int, batch_idx: int) -> None:
        # This step's values (kd_lightning modules keep them; they log them only on logging steps),
        # else the last logged ones.
        logged = {**trainer.callback_metrics, **getattr(pl_module, "step_values", {})}
        terms = {
            name.removeprefix("train/"): float(value)
            for name, value in logged.items()
            if name.startswith("train/") and isinstance(value, torch.Tensor) and value.numel() == 1
        }
        bad_terms = [
            f"{name}={value}" for name, value in sorted(terms.items()) if not torch.isfinite(torch.tensor(value))
        ]
        raise NonFiniteLossError(
            f"non-finite loss at training step {first_bad} (epoch {trainer.current_epoch}, batch {batch_idx}); "
            f"non-finite terms: {', '.join(bad_terms) or 'loss'}. Lower the learning rate, clip gradients "
            "(trainer.gradient_clip_val), use a higher temperature, or check the inputs and the teacher's outputs."
        )
