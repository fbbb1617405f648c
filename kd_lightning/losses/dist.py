"""DIST: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

import torch

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, check_temperature, comparable_logits
from kd_lightning.losses.base import LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

_EPS = 1e-8


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """``1 − ρ(a_i, b_i)`` per row, averaged over rows (Huang et al., Eq. 4 with ``d_p``)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    rho = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - rho.mean()


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    standardize: bool = False,
) -> torch.Tensor:
    """``T²·(β·L_inter + γ·L_intra)`` on ``softmax(z / T)`` (Huang et al. 2022, Eqs. 5, 7 and 8).

    ``L_inter`` (Eq. 5) matches each sample's class ranking: ``1 − Pearson`` across classes, per
    sample, averaged over the batch. ``L_intra`` (Eq. 7) matches how each class's probability
    varies across the batch: the same distance on the transposed ``[C, B]`` matrix. The ``T²``
    factor and the small ``eps`` in the denominator follow the authors' implementation; the
    paper uses ``β = γ = T = 1`` on ImageNet and ``β = γ = 2, T = 4`` on CIFAR-100.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits.
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation.
        temperature: softening temperature ``T``.
        standardize: z-score each sample's logits first (logit standardisation, Sun et al., CVPR 2024).
    """
    check_temperature(temperature)
    with autocast_off(student_logits):
        s, t = comparable_logits(student_logits, teacher_logits, standardize)
        p_s = (s / temperature).softmax(dim=1)
        p_t = (t / temperature).softmax(dim=1)
        inter = pearson_distance(p_s, p_t)
        intra = pearson_distance(p_s.T, p_t.T)
    return temperature**2 * (beta * inter + gamma * intra)


@register_loss("dist")
class DISTLoss(LogitLoss):
    """Module form of :func:`dist_loss`."""

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, standardize: bool = False
    ) -> None:
        super().__init__(temperature, standardize)
        self.beta, self.gamma = beta, gamma

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return dist_loss(student.logits, teacher.logits, self.beta, self.gamma, self.temperature, self.standardize)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}, standardize={self.standardize}"
