"""NKD: normalized knowledge distillation (Yang et al., "From Knowledge Distillation to
Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels",
ICCV 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, check_temperature, comparable_logits
from kd_lightning.losses.base import LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def drop_target_class(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` logits without each sample's target column: ``[B, C − 1]``, the other classes in order."""
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, target.view(-1, 1), False)
    return logits[keep].view(logits.shape[0], logits.shape[1] - 1)


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
    standardize: bool = False,
) -> torch.Tensor:
    """``−mean_i t_i·log s_i  −  γ·T²·mean_i Σ_{j≠y} t̂_j·log ŝ_j`` (Yang et al. 2023, Eq. 8).

    KD's loss splits into a target term and a non-target term whose weight ``1 − t_y`` ties it to
    the target; NKD keeps the target term as the teacher-weighted cross-entropy at temperature 1,
    and *normalises* the non-target term: a cross-entropy between the softmaxes over the
    non-target classes only (``t̂``, ``ŝ``, at temperature ``T``), weighted by ``γ``. As in the
    authors' code both terms are cross-entropies, not KL divergences (they differ by the teacher's
    entropy, a constant of the student), and the target term is averaged over the batch.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits.
        target: ``[B]`` class indices.
        temperature: temperature ``T`` of the non-target term (the target term is at 1).
        gamma: weight ``γ`` of the non-target term (1.5 on ImageNet, 3.5 on CIFAR-100).
        standardize: z-score each sample's logits first (logit standardisation).
    """
    check_temperature(temperature)
    with autocast_off(student_logits):
        s, t = comparable_logits(student_logits, teacher_logits, standardize)
        index = target.view(-1, 1)
        log_s_target = F.log_softmax(s, dim=1).gather(1, index)
        t_target = F.softmax(t, dim=1).gather(1, index)
        target_term = -(t_target * log_s_target).mean()
        log_s_rest = F.log_softmax(drop_target_class(s, target) / temperature, dim=1)
        t_rest = F.softmax(drop_target_class(t, target) / temperature, dim=1)
        non_target_term = -(t_rest * log_s_rest).sum(dim=1).mean()
    return target_term + gamma * temperature**2 * non_target_term


@register_loss("nkd")
class NKDLoss(LogitLoss):
    """Module form of :func:`nkd_loss`; it splits at the context's labels, so every sample needs one."""

    needs_labels = True

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5, standardize: bool = False) -> None:
        super().__init__(temperature, standardize)
        self.gamma = gamma

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return nkd_loss(student.logits, teacher.logits, context.labels, self.temperature, self.gamma, self.standardize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gamma={self.gamma}, standardize={self.standardize}"
