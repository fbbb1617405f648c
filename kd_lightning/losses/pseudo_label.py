"""Self-training on the teacher's hard labels (pseudo-labelling; Lee, 2013; Xie et al., CVPR 2020).

The student learns each unlabeled image's class as the teacher's argmax and each labelled image's
class as its own label: the baseline a practitioner tries before soft-label distillation, since it
needs nothing but the teacher's predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, check_logit_pair, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import IGNORE_LABEL, ModelOutputs


def pseudo_label_targets(
    teacher_logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's target and whether it counts: its own label where it has one, else the teacher's argmax,
    counted when the teacher's probability of that class reaches ``threshold`` (labelled samples always count)."""
    confidence, argmax = teacher_logits.detach().float().softmax(dim=-1).max(dim=-1)
    labeled = labels != IGNORE_LABEL
    targets = torch.where(labeled, labels, argmax)
    return targets, labeled | (confidence >= threshold)


def pseudo_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of the student against :func:`pseudo_label_targets`, averaged over every sample (those
    below ``threshold`` add 0), so that with ``threshold=0`` it is plain cross-entropy on a fully labelled set."""
    check_logit_pair(student_logits, teacher_logits)
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"pseudo_label: {labels.numel()} labels for {len(student_logits)} samples")
    targets, counted = pseudo_label_targets(teacher_logits, labels, threshold)
    with autocast_off(student_logits):
        per_sample = F.cross_entropy(full_precision(student_logits), targets, reduction="none")
    return (per_sample * counted).mean()


@register_loss("pseudo_label")
class PseudoLabelLoss(DistillationLoss):
    """Module form of :func:`pseudo_label_loss`. Use it as the whole objective (``ce`` not listed): it already
    applies the labels where the batch has them.

    Args:
        threshold: the teacher's probability an unlabeled image's argmax needs to count (0: every image).
    """

    def __init__(self, threshold: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"pseudo_label: threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold
        # A top-k cache keeps the argmax but not the softmax at T=1 that a threshold reads.
        self.topk_compatible = threshold == 0.0

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return pseudo_label_loss(student.logits, teacher.logits, context.labels, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
