"""Hinton et al. (2015) knowledge distillation on softened logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, check_logit_pair, check_temperature, full_precision
from kd_lightning.losses.base import LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch.

    The ``T²`` factor keeps the gradient magnitude of the soft term independent of ``T``
    (Hinton et al., 2015, §2). The KL is computed in at least float32 whatever the input dtype, so it
    stays accurate under bf16/fp16 autocast.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits (treated as constants by the caller).
        temperature: softening temperature ``T > 0``.
    """
    check_temperature(temperature)
    check_logit_pair(student_logits, teacher_logits)
    with autocast_off(student_logits):
        log_p_student = F.log_softmax(full_precision(student_logits) / temperature, dim=-1)
        log_p_teacher = F.log_softmax(full_precision(teacher_logits) / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss("kd")
class KDLoss(LogitLoss):
    """Module form of :func:`kd_loss`."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__(temperature)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return kd_loss(student.logits, teacher.logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
