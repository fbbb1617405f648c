"""Distillation losses: pure functions of tensors, each wrapped by a small registered module."""

from kd_lightning.losses._registry import create_loss, list_losses, register_loss
from kd_lightning.losses.base import DistillationLoss, ModelOutputs
from kd_lightning.losses.kd import KDLoss, kd_loss

__all__ = [
    "DistillationLoss",
    "KDLoss",
    "ModelOutputs",
    "create_loss",
    "kd_loss",
    "list_losses",
    "register_loss",
]
