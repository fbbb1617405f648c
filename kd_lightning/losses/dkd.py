"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, check_temperature, comparable_logits
from kd_lightning.losses.base import LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

# Subtracted from the temperature-scaled target logit before the non-target softmax (as mdistiller
# does): its weight exp(-1000) underflows to 0 in float32/64, which removes the target class as in
# the paper's ``p̂`` (Eq. 2), while -inf would make the KL's 0·log 0 term NaN.
_MASK_OFFSET = 1000.0


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    standardize: bool = False,
) -> torch.Tensor:
    """``α·TCKD + β·NCKD`` of Zhao et al. (2022), Eq. (7), each term ``T²``-scaled, batch mean.

    KD splits into a target-class term and a non-target term (their Eq. 5, ``KD = TCKD +
    (1 − p_t^T)·NCKD``); DKD drops the coupling factor ``1 − p_t^T`` and weights the terms freely:

    - TCKD = ``KL(b^T ‖ b^S)`` on the binary distribution ``b = [p_target, 1 − p_target]``,
    - NCKD = ``KL(p̂^T ‖ p̂^S)`` on the softmax over the non-target classes only.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits.
        target: ``[B]`` ground-truth class indices.
        alpha: weight of TCKD (1.0 in the paper).
        beta: weight of NCKD (8.0 for most CIFAR-100 pairs in the paper).
        temperature: softening temperature ``T``.
        standardize: z-score each sample's logits first (DKD+LS, Sun et al., CVPR 2024).
    """
    check_temperature(temperature)
    with autocast_off(student_logits):
        s, t = comparable_logits(student_logits, teacher_logits, standardize)
        s, t = s / temperature, t / temperature
        is_target = F.one_hot(target, s.shape[-1]).bool()
        tckd = _kl(_binary_log_probs(s, is_target), _binary_log_probs(t, is_target))
        nckd = _kl(
            F.log_softmax(s - _MASK_OFFSET * is_target, dim=-1), F.log_softmax(t - _MASK_OFFSET * is_target, dim=-1)
        )
    return (alpha * tckd + beta * nckd) * temperature**2


def _binary_log_probs(scaled_logits: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """``log [p_target, p_rest]`` via logsumexp over each group, stable for large logits."""
    neg_inf = torch.finfo(scaled_logits.dtype).min
    target_part = torch.logsumexp(scaled_logits.masked_fill(~is_target, neg_inf), dim=-1)
    rest_part = torch.logsumexp(scaled_logits.masked_fill(is_target, neg_inf), dim=-1)
    return torch.stack([target_part, rest_part], dim=-1) - torch.logsumexp(scaled_logits, dim=-1, keepdim=True)


def _kl(log_p_student: torch.Tensor, log_p_teacher: torch.Tensor) -> torch.Tensor:
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


@register_loss("dkd")
class DKDLoss(LogitLoss):
    """Module form of :func:`dkd_loss`, with the paper's linear warm-up of the loss weight.

    Zhao et al. ramp the whole DKD term linearly over the first ``warmup_epochs`` epochs
    (20 on CIFAR-100), since the large ``β`` otherwise swamps the cross-entropy early on. The
    factor in the context's 0-based epoch ``e`` is ``min((e + 1) / warmup_epochs, 1)``. DKD splits
    the distribution at the context's labels, so it needs a label for every sample.

    Args:
        alpha, beta, temperature, standardize: see :func:`dkd_loss`.
        warmup_epochs: epochs of linear warm-up (0 = off).
    """

    needs_labels = True

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 0,
        standardize: bool = False,
    ) -> None:
        super().__init__(temperature, standardize)
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.alpha, self.beta = alpha, beta
        self.warmup_epochs = warmup_epochs

    def warmup_factor(self, epoch: int) -> float:
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        loss = dkd_loss(
            student.logits, teacher.logits, context.labels, self.alpha, self.beta, self.temperature, self.standardize
        )
        return self.warmup_factor(context.epoch) * loss

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"warmup_epochs={self.warmup_epochs}, standardize={self.standardize}"
        )
