"""Distillation losses: pure functions of tensors, each wrapped by a small registered module."""

from kd_lightning.losses._registry import create_loss, list_losses, register_loss
from kd_lightning.losses._utils import check_temperature
from kd_lightning.losses.attention import AttentionTransferLoss, at_loss, attention_map
from kd_lightning.losses.base import DistillationLoss, LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.losses.crd import CRDLoss, crd_loss, nce_loss
from kd_lightning.losses.dist import DISTLoss, dist_loss
from kd_lightning.losses.dkd import DKDLoss, dkd_loss
from kd_lightning.losses.fitnet import FitNetLoss, hint_loss
from kd_lightning.losses.kd import KDLoss, kd_loss
from kd_lightning.losses.pkt import PKTLoss, pkt_loss
from kd_lightning.losses.rkd import RKDLoss, rkd_angle_loss, rkd_distance_loss, rkd_loss
from kd_lightning.losses.similarity import SimilarityPreservingLoss, sp_loss
from kd_lightning.losses.term import LossTerm, as_term
from kd_lightning.outputs import ModelOutputs

__all__ = [
    "AttentionTransferLoss",
    "CRDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "FitNetLoss",
    "KDLoss",
    "LogitLoss",
    "LossTerm",
    "ModelOutputs",
    "PKTLoss",
    "RKDLoss",
    "SimilarityPreservingLoss",
    "StepContext",
    "as_term",
    "at_loss",
    "attention_map",
    "check_temperature",
    "create_loss",
    "crd_loss",
    "dist_loss",
    "dkd_loss",
    "hint_loss",
    "kd_loss",
    "list_losses",
    "nce_loss",
    "pkt_loss",
    "register_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "sp_loss",
]
