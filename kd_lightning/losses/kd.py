"""Hinton et al. (2015) knowledge distillation on softened logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, check_temperature, comparable_logits
from kd_lightning.losses.base import LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0, standardize: bool = False
) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch.

    The ``T²`` factor keeps the gradient magnitude of the soft term independent of ``T``
    (Hinton et al., 2015, §2). The KL is computed in at least float32 whatever the input dtype, so it
    stays accurate under bf16/fp16 autocast.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits (treated as constants by the caller).
        temperature: softening temperature ``T > 0``.
        standardize: z-score each sample's logits first (KD+LS, Sun et al., CVPR 2024), keeping ``T²``.
    """
    check_temperature(temperature)
    with autocast_off(student_logits):
        s, t = comparable_logits(student_logits, teacher_logits, standardize)
        log_p_student = F.log_softmax(s / temperature, dim=-1)
        log_p_teacher = F.log_softmax(t / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss("kd")
class KDLoss(LogitLoss):
    """Module form of :func:`kd_loss`."""

    def __init__(self, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__(temperature, standardize)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return kd_loss(student.logits, teacher.logits, self.temperature, self.standardize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, standardize={self.standardize}"
