"""MLKD: multi-level logit distillation (Jin et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import (
    autocast_off,
    check_logit_pair,
    check_temperature,
    full_precision,
    standardize_logits,
)
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

# The authors' temperatures: the configured one (4 on CIFAR-100) and four fixed others.
MLKD_TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


def _instance_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T²·KL(p_t ‖ p_s)`` at ``temperature``, batch mean."""
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def _class_consistency(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``‖P_tᵀP_t − P_sᵀP_s‖²_F / C``: the class-correlation (``[C, C]`` Gram) term."""
    p_s, p_t = (s / temperature).softmax(dim=1), (t / temperature).softmax(dim=1)
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / s.shape[1]


def _batch_consistency(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``‖P_tP_tᵀ − P_sP_sᵀ‖²_F / B``: the sample-correlation (``[B, B]`` Gram) term."""
    p_s, p_t = (s / temperature).softmax(dim=1), (t / temperature).softmax(dim=1)
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / s.shape[0]


def confidence_fractions(teacher_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shares of samples and of classes at or below the median confidence of the teacher.

    Samples are ranked by the teacher's top probability (at temperature 1), classes by their
    probability summed over the batch; the median interpolates linearly, as NumPy's percentile.
    """
    probs = F.softmax(teacher_weak.detach(), dim=1)
    confidence = probs.max(dim=1).values
    class_confidence = probs.sum(dim=0)
    sample_share = (confidence <= torch.quantile(confidence, 0.5)).to(probs.dtype).mean()
    class_share = (class_confidence <= torch.quantile(class_confidence, 0.5)).to(probs.dtype).mean()
    return sample_share, class_share


def mlkd_loss(
    student_weak: torch.Tensor,
    teacher_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_strong: torch.Tensor,
    temperatures: Sequence[float] = MLKD_TEMPERATURES,
    standardize: bool = False,
) -> torch.Tensor:
    """MLKD's instance, batch and class terms on a weakly and a strongly augmented view, as the
    authors' code computes them (their ``KD_ours``; the numbers of the paper come from it).

    The paper (Eqs. 3-8) sums, over temperatures, an instance KD, a batch-correlation and a
    class-correlation term on both views, masking out the samples the teacher is most confident
    about (prediction augmentation with confidence-based masking). The code departs from that
    text, and this function follows the code:

    - each term is reduced to a scalar *before* the confidence mask, so "masking" scales the
      scalar by the share of samples (or classes) at or below the median confidence;
    - the instance term on the strong view uses the strong logits only at ``temperatures[:3]``;
      at ``temperatures[3:]`` (2 and 6) it reads the *weak* logits again;
    - the class and batch terms enter on the weak view only (the strong ones are not summed);
    - logit standardisation (LS-KD's MLKD+LS) z-scores the instance KD terms only.

    Args:
        student_weak, teacher_weak: ``[B, C]`` logits of the weakly augmented view.
        student_strong, teacher_strong: ``[B, C]`` logits of the strongly augmented view.
        temperatures: the temperatures summed over (the authors': 4, 3, 5, 2, 6).
        standardize: z-score each sample's logits in the instance KD terms.
    """
    for temperature in temperatures:
        check_temperature(temperature)
    check_logit_pair(student_weak, teacher_weak)
    check_logit_pair(student_strong, teacher_strong)
    with autocast_off(student_weak):
        sw, tw = full_precision(student_weak), full_precision(teacher_weak)
        ss, ts = full_precision(student_strong), full_precision(teacher_strong)
        sample_share, class_share = confidence_fractions(tw)
        kw, kt = (standardize_logits(sw), standardize_logits(tw)) if standardize else (sw, tw)
        ks, kts = (standardize_logits(ss), standardize_logits(ts)) if standardize else (ss, ts)
        terms = []
        for i, temperature in enumerate(temperatures):
            strong_pair = (ks, kts) if i < 3 else (kw, kt)
            terms.append(sample_share * _instance_kd(kw, kt, temperature))
            terms.append(_instance_kd(*strong_pair, temperature))
            terms.append(class_share * _class_consistency(sw, tw, temperature))
            terms.append(sample_share * _batch_consistency(sw, tw, temperature))
    return torch.stack(terms).sum()


@register_loss("mlkd")
class MLKDLoss(DistillationLoss):
    """Module form of :func:`mlkd_loss` on the batch's one view.

    The authors feed every image twice, weakly (crop and flip) and strongly augmented; the
    distiller's batches carry one view, which this module passes as both, so it is MLKD without
    its strong augmentation. The loss softens at several temperatures, so a top-k teacher cache
    cannot keep the dropped classes exact at all of them; this loss declares none.

    Args:
        temperatures: see :func:`mlkd_loss`.
        standardize: z-score the logits of the instance terms (MLKD+LS).
    """

    topk_compatible = False  # softens the teacher at several temperatures

    def __init__(self, temperatures: Sequence[float] = MLKD_TEMPERATURES, standardize: bool = False) -> None:
        super().__init__()
        if not temperatures:
            raise ValueError("MLKD needs at least one temperature, e.g. the authors' [4, 3, 5, 2, 6]")
        for temperature in temperatures:
            check_temperature(temperature)
        self.temperatures, self.standardize = tuple(temperatures), standardize

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return mlkd_loss(
            student.logits, teacher.logits, student.logits, teacher.logits, self.temperatures, self.standardize
        )

    def extra_repr(self) -> str:
        return f"temperatures={self.temperatures}, standardize={self.standardize}"
