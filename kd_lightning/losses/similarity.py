"""Similarity-Preserving Knowledge Distillation (Tung & Mori, ICCV 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def sp_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """``‖G̃_S − G̃_T‖_F² / b²`` of Tung & Mori (2019), Eqs. (2)-(4).

    ``G = Q·Qᵀ`` is the ``b × b`` similarity of the flattened activations within the batch, and
    ``G̃`` is ``G`` with each row L2-normalised. Only batch-level similarities are compared, so
    teacher and student may have any widths and spatial sizes.
    """
    if len(student_features) != len(teacher_features):
        raise ValueError(f"batch sizes differ: {len(student_features)} vs {len(teacher_features)}")
    b = len(student_features)
    with autocast_off(student_features):
        g_s = _similarity(student_features)
        g_t = _similarity(teacher_features)
        return (g_s - g_t).pow(2).sum() / b**2


def _similarity(features: torch.Tensor) -> torch.Tensor:
    q = full_precision(features).flatten(1)
    return F.normalize(q @ q.T, dim=1)


@register_loss("sp")
class SimilarityPreservingLoss(DistillationLoss):
    """Sum of :func:`sp_loss` over tapped layer pairs (the last stage in the paper, γ = 3000).

    Args:
        student_layers: student layers whose batch similarities are trained.
        teacher_layers: teacher layers they are matched to.
    """

    def __init__(
        self, student_layers: Sequence[str] = ("layer3",), teacher_layers: Sequence[str] = ("layer3",)
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return torch.stack([sp_loss(s, t) for s, t in self.feature_pairs(student, teacher)]).sum()
