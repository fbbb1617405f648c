"""Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

_EPS = 1e-7


def pkt_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Divergence between the conditional probability distributions of the two feature spaces.

    Passalis & Tefas (2018), Eqs. (7)-(10) with the cosine-similarity kernel
    ``K(a, b) = ½(aᵀb/(‖a‖‖b‖) + 1)``: ``p_{i|j} = K(x_i, x_j) / Σ_k K(x_k, x_j)`` for each network,
    then ``Σ_i Σ_j p^T_{j|i} log(p^T_{j|i} / p^S_{j|i})``, averaged over the ``b × b`` entries as in
    the authors' code (and with their ``eps`` inside the logarithm).
    """
    with autocast_off(student_features):
        s_prob, t_prob = _conditional(student_features, eps), _conditional(teacher_features, eps)
        return (t_prob * torch.log((t_prob + eps) / (s_prob + eps))).mean()


def _conditional(features: torch.Tensor, eps: float) -> torch.Tensor:
    x = full_precision(features).flatten(1)
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    kernel = (x @ x.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_loss("pkt")
class PKTLoss(DistillationLoss):
    """Sum of :func:`pkt_loss` over tapped layer pairs (the pooled features by default, weight 30000).

    Args:
        student_layers: student layers.
        teacher_layers: teacher layers they are matched to.
    """

    def __init__(
        self, student_layers: Sequence[str] = ("backbone",), teacher_layers: Sequence[str] = ("backbone",)
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return torch.stack([pkt_loss(s, t) for s, t in self.feature_pairs(student, teacher)]).sum()
