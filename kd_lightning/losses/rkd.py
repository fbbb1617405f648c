"""Relational Knowledge Distillation (Park et al., CVPR 2019): distance and angle losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

_EPS = 1e-12


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """``‖x_i − x_j‖₂`` for all pairs, with an exact zero (and zero gradient) on the diagonal."""
    squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(dim=-1)
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return squared.clamp_min(_EPS).sqrt() * off_diagonal


def rkd_distance_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Huber loss between distance potentials ``ψ_D = ‖t_i − t_j‖ / μ`` (Park et al., Eqs. 3-5).

    ``μ`` is the mean distance over the ``b(b−1)`` distinct pairs of the batch, so the loss
    compares the *shape* of the two embeddings, not their scale; the Huber loss (``δ = 1``) is
    averaged over the ``b × b`` matrix.
    """
    s, t = _flat(student_features), _flat(teacher_features)
    pairs = len(s) * (len(s) - 1)
    d_s, d_t = pairwise_distances(s), pairwise_distances(t)
    return F.smooth_l1_loss(d_s / (d_s.sum() / pairs), d_t / (d_t.sum() / pairs))


def rkd_angle_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Huber loss between angle potentials ``ψ_A = cos∠t_i t_j t_k = ⟨e^{ij}, e^{kj}⟩`` (Eqs. 6-8).

    ``e^{ij} = (t_i − t_j)/‖t_i − t_j‖``; all ``b³`` triplets are compared (degenerate ones are 0
    in both networks and add nothing).
    """
    s, t = _flat(student_features), _flat(teacher_features)
    with autocast_off(s):
        return F.smooth_l1_loss(_angles(s), _angles(t))


def _angles(x: torch.Tensor) -> torch.Tensor:
    directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


def _flat(x: torch.Tensor) -> torch.Tensor:
    if len(x) < 2:
        raise ValueError("relational losses need a batch of at least 2 samples")
    return full_precision(x).flatten(1)


def rkd_loss(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """``λ_D·L_RKD-D + λ_A·L_RKD-A`` (Park et al., Eq. 9); 25 and 50 as in the paper and RepDistiller."""
    loss = student_features.new_zeros((), dtype=full_precision(student_features).dtype)
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student_features, teacher_features)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student_features, teacher_features)
    return loss


@register_loss("rkd")
class RKDLoss(DistillationLoss):
    """Module form of :func:`rkd_loss`, summed over tapped layer pairs (the pooled features by default).

    Args:
        student_layers: student layers (``backbone`` is the pooled embedding before the head).
        teacher_layers: teacher layers they are matched to.
        distance_weight: ``λ_D``.
        angle_weight: ``λ_A``.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("backbone",),
        teacher_layers: Sequence[str] = ("backbone",),
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        pairs = self.feature_pairs(student, teacher)
        return torch.stack([rkd_loss(s, t, self.distance_weight, self.angle_weight) for s, t in pairs]).sum()

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"
