"""The distiller's side of the DOT optimizer: the weighted ``ce`` term is the task loss, the sum of every
other weighted term the distillation loss; and what DOT cannot split is refused before training."""

from __future__ import annotations

import lightning as L
import torch

from kd_lightning.errors import ConfigError
from kd_lightning.losses import DistillationLoss
from kd_lightning.losses.term import CROSS_ENTROPY
from kd_lightning.optim import DOT


def task_objective(
    optimizer: DOT, terms: dict[str, torch.Tensor], weights: dict[str, float], accumulated_batches: int
) -> torch.Tensor:
    """Hand DOT the gradient of the distillation terms (every term but ``ce``); return the objective's
    value whose ``backward`` leaves the task gradient (the weighted ``ce`` term's) in ``p.grad``.

    Lightning divides the returned loss by the number of accumulated batches before ``backward``; the
    distillation gradient is divided alike, so both parts keep their weights.
    """
    distillation = torch.stack([w * terms[name] for name, w in weights.items() if name != CROSS_ENTROPY]).sum()
    optimizer.add_distillation_loss(distillation / accumulated_batches)
    return weights[CROSS_ENTROPY] * terms[CROSS_ENTROPY] + distillation.detach()


def check_dot(weights: dict[str, float], losses: list[tuple[str, DistillationLoss]], trainer: L.Trainer | None) -> None:
    """Refuse an objective DOT cannot split into a task and a distillation gradient, and the trainer
    settings that would touch only one of the two (the trainer's are skipped when there is none)."""
    distillation = [name for name, weight in weights.items() if name != CROSS_ENTROPY and weight]
    if not weights[CROSS_ENTROPY] or not distillation:
        raise ConfigError(
            "the DOT optimizer balances the ce term against distillation terms, but the objective lacks one: "
            "give ce and a distillation term a non-zero weight, or use torch.optim.SGD"
        )
    staged = [name for name, loss in losses if loss.trains_alone(0)]
    if staged:
        raise ConfigError(
            f"terms {staged} train alone in a first stage, which has no ce term for the DOT optimizer to balance: "
            "drop their init/hint epochs or use torch.optim.SGD"
        )
    if trainer is None:
        return
    if trainer.gradient_clip_val:
        raise ConfigError(
            "trainer.gradient_clip_val would clip only the task part of the DOT optimizer's gradient: "
            "drop gradient_clip_val or use torch.optim.SGD"
        )
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ConfigError(
            f"precision {trainer.precision_plugin.precision} scales only the task part of the DOT optimizer's "
            "gradient: use precision bf16-mixed or 32, or torch.optim.SGD"
        )
    if trainer.world_size > 1:
        raise ConfigError(
            "the DOT optimizer takes the distillation gradient outside DistributedDataParallel's gradient sync: "
            "train on one device or use torch.optim.SGD"
        )
