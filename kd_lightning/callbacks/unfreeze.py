"""Unfreeze a finetuner's backbone at a given epoch, in its own optimizer param group."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer

from kd_lightning.models.freezing import freeze


class BackboneUnfreeze(BaseFinetuning):
    """Freeze the backbone before training; from ``unfreeze_at_epoch`` on, train it at a lower rate.

    Built on Lightning's :class:`BaseFinetuning`, which stores the added param group in the
    checkpoint, so a run resumed after the unfreeze epoch keeps training the backbone.

    Args:
        unfreeze_at_epoch: first epoch (0-based) in which the backbone trains.
        backbone_lr_factor: backbone learning rate as a fraction of the head's initial one.
    """

    def __init__(self, unfreeze_at_epoch: int = 1, backbone_lr_factor: float = 0.1) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise ValueError(f"unfreeze_at_epoch must be >= 0, got {unfreeze_at_epoch}")
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_factor = backbone_lr_factor

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        freeze(pl_module.network.backbone)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch skips ``on_train_epoch_start``, where BaseFinetuning unfreezes:
        # without this the restored backbone param group would hold frozen parameters.
        for optimizer in trainer.optimizers:
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch:
            return
        backbone = pl_module.network.backbone
        if all(p.requires_grad for p in backbone.parameters()):
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) in in_optimizer for p in backbone.parameters()):
            # Resumed after the unfreeze: BaseFinetuning already restored the param group.
            self.make_trainable(backbone)
        else:
            head_lr = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
            self.unfreeze_and_add_param_group(backbone, optimizer, lr=head_lr * self.backbone_lr_factor)
        pl_module.train(pl_module.training)  # BatchNorm layers now train too
