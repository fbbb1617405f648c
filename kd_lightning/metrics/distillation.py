"""How far the student is from its teacher: mean KL(teacher ‖ student)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric


def teacher_student_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(p_teacher ‖ p_student) = Σ_c p_t,c (log p_t,c − log p_s,c)`` at temperature 1.

    Computed in float32 (or float64 if given) whatever the input precision: under mixed precision
    the difference of two nearly equal log-probabilities would otherwise round to noise.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits.

    Returns:
        ``[B]`` non-negative divergences, in nats.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"expected two [B, C] logit tensors of one shape, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_p_student = F.log_softmax(student_logits.to(dtype), dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.to(dtype), dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)


class TeacherStudentKL(MeanMetric):
    """Mean of :func:`teacher_student_kl` over every sample seen (lower is closer to the teacher)."""

    higher_is_better = False  # type: ignore[assignment]  # torchmetrics' BaseAggregator types it as None
    full_state_update = False

    def update(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:  # type: ignore[override]
        super().update(teacher_student_kl(student_logits, teacher_logits))
