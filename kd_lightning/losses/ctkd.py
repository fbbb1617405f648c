"""CTKD: curriculum temperature for knowledge distillation (Li et al., AAAI 2023)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, comparable_logits, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def kd_loss_at(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: torch.Tensor, standardize: bool = False
) -> torch.Tensor:
    """Hinton's ``T²·KL(softmax(t/T) ‖ softmax(s/T))``, batch mean, at a temperature that is a tensor
    (differentiable: CTKD learns it).

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits.
        temperature: a one-element tensor ``T > 0``.
        standardize: z-score each sample's logits first (logit standardisation).
    """
    with autocast_off(student_logits):
        s, t = comparable_logits(student_logits, teacher_logits, standardize)
        temperature = full_precision(temperature).reshape(())
        log_p_student = F.log_softmax(s / temperature, dim=-1)
        log_p_teacher = F.log_softmax(t / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``−strength``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def reverse_gradient(x: torch.Tensor, strength: float) -> torch.Tensor:
    """``x`` unchanged, but its gradient multiplied by ``−strength`` (a gradient reversal layer)."""
    return _ReverseGradient.apply(x, strength)


def cosine_reversal_strength(epoch: int, ramp_epochs: int, max_strength: float = 1.0) -> float:
    """CTKD's curriculum: the reversal strength rises from 0 to ``max_strength`` along a half cosine
    over ``ramp_epochs`` epochs, then stays. ``epoch`` is 0-based; the authors count from 1, so
    the first epoch already has ``max_strength·(1 − cos(π/ramp_epochs))/2``."""
    step = min(epoch + 1, ramp_epochs)
    return max_strength * (1.0 - math.cos(step * math.pi / ramp_epochs)) / 2.0


class GlobalTemperature(nn.Module):
    """One learnable temperature ``T = t_start + t_end·sigmoid(τ)`` whose gradient is reversed.

    ``τ`` starts at 1. Reversing its gradient makes the temperature *maximise* the distillation
    loss the student minimises: the student meets ever harder temperatures (Li et al. 2023, Eq. 5).
    """

    def __init__(self, t_start: float = 1.0, t_end: float = 20.0) -> None:
        super().__init__()
        self.t_start, self.t_end = t_start, t_end
        self.tau = nn.Parameter(torch.ones(1))

    def forward(self, strength: float) -> torch.Tensor:
        return self.t_start + self.t_end * torch.sigmoid(reverse_gradient(self.tau, strength))


@register_loss("ctkd")
class CTKDLoss(DistillationLoss):
    """KD at a global temperature learnt adversarially on a curriculum (CTKD, global variant).

    The temperature module's parameter is a submodule parameter, so the distiller's optimizer
    trains it with the student (the authors' SGD does the same, weight decay included). The
    reversal strength follows :func:`cosine_reversal_strength` of the context's epoch, so a run
    resumed mid-way meets the same curriculum. The temperature is learnt, so a top-k teacher cache
    cannot keep the dropped classes exact at it; this loss does not declare one.

    Args:
        t_start: lowest temperature (1 in the paper).
        t_end: range above it: ``T ∈ (t_start, t_start + t_end)`` (20 in the paper).
        ramp_epochs: epochs of the cosine ramp of the reversal strength (10 in the authors' scripts).
        max_strength: reversal strength reached after the ramp (1 in the authors' scripts).
        standardize: z-score each sample's logits first (CTKD+LS, Sun et al., CVPR 2024).
    """

    topk_compatible = False  # softens the teacher at a learnt temperature

    def __init__(
        self,
        t_start: float = 1.0,
        t_end: float = 20.0,
        ramp_epochs: int = 10,
        max_strength: float = 1.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if not t_start > 0 or t_end < 0:
            raise ValueError(f"CTKD needs t_start > 0 and t_end >= 0, got t_start={t_start}, t_end={t_end}")
        if ramp_epochs < 1:
            raise ValueError(f"ramp_epochs must be >= 1, got {ramp_epochs}")
        self.temperature_module = GlobalTemperature(t_start, t_end)
        self.ramp_epochs, self.max_strength, self.standardize = ramp_epochs, max_strength, standardize

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        strength = cosine_reversal_strength(context.epoch, self.ramp_epochs, self.max_strength)
        temperature = self.temperature_module(strength)
        return kd_loss_at(student.logits, teacher.logits, temperature, self.standardize)

    def extra_repr(self) -> str:
        return f"ramp_epochs={self.ramp_epochs}, max_strength={self.max_strength}, standardize={self.standardize}"
