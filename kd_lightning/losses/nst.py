"""Neuron Selectivity Transfer (Huang & Wang, "Like What You Like", 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kd_lightning.losses._feature_maps import check_feature_maps, pool_to_smaller
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def _polynomial_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``k(x, y) = (xᵀy)²`` between every channel of ``a`` ``[B, Ca, N]`` and of ``b`` ``[B, Cb, N]``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2)


def nst_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the channels' spatial distributions, with the polynomial kernel ``(xᵀy)²``.

    Huang & Wang (2017), Eq. (6) with ``d = 2, c = 0``: each channel's activations over the ``H·W``
    positions form one sample, L2-normalised; the loss is
    ``mean k(s, s') + mean k(t, t') − 2 mean k(s, t)`` over channel pairs, averaged over the batch
    (RepDistiller's and mdistiller's reduction). The larger map is average-pooled to the
    smaller's size. The teacher-only term carries no gradient; it keeps the value a distance.
    """
    s, t = pool_to_smaller(student_features, teacher_features)
    with autocast_off(s):
        s = F.normalize(full_precision(s).flatten(2), dim=2)
        t = F.normalize(full_precision(t).flatten(2), dim=2)
        return (
            _polynomial_kernel(t, t).mean().detach()
            + _polynomial_kernel(s, s).mean()
            - 2 * _polynomial_kernel(t, s).mean()
        )


@register_loss("nst")
class NSTLoss(DistillationLoss):
    """Sum of :func:`nst_loss` over the tapped layer pairs (the three stage outputs, weight 50 on CIFAR-100).

    Args:
        student_layers: student layers whose channel distributions are trained.
        teacher_layers: teacher layers they are matched to.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("NST", student_shapes, self.student_layers)
        check_feature_maps("NST", teacher_shapes, self.teacher_layers)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return torch.stack([nst_loss(s, t) for s, t in self.feature_pairs(student, teacher)]).sum()
