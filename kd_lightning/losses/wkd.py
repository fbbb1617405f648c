"""WKD-L: Wasserstein distance for logit distillation (Lv et al., "Wasserstein Distance Rivals
Kullback-Leibler Divergence for Knowledge Distillation", NeurIPS 2024)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import (
    autocast_off,
    check_logit_pair,
    check_temperature,
    full_precision,
    standardize_logits,
)
from kd_lightning.losses.base import LogitLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.losses.nkd import drop_target_class
from kd_lightning.outputs import ModelOutputs

# Added to Sinkhorn's denominators and to the cost (the authors' constant): a class whose
# probability underflows must not divide by zero, and no transport is free.
_SINKHORN_EPS = 1e-8


def classifier_cost_matrix(head_weight: torch.Tensor, sharpen: float = 0.0) -> torch.Tensor:
    """``[C, C]`` costs between classes from the teacher's classifier weights, one row per class.

    The rows are the classes' prototypes; their cosine similarity says how alike two classes are
    to the teacher, and ``1 − cos`` is the cost of moving probability mass between them (Lv et al.
    2024, Sec. 3.1). ``sharpen`` ``κ > 0`` maps it to ``1 − exp(−κ·(1 − cos))``, as the authors'
    ``COST_MATRIX_SHARPEN`` option does.
    """
    prototypes = F.normalize(full_precision(head_weight.detach()), p=2, dim=-1)
    cost = 1.0 - prototypes @ prototypes.T
    return 1.0 - torch.exp(-sharpen * cost) if sharpen else cost


def sinkhorn_distance(p: torch.Tensor, q: torch.Tensor, cost: torch.Tensor, reg: float, iters: int) -> torch.Tensor:
    """Entropy-regularised optimal-transport cost ``Σ_ij π_ij·M_ij`` between rows of ``p`` and ``q``, batch mean.

    ``iters`` Sinkhorn iterations from ``u = 1/C``, gradients through every one of them.

    Args:
        p: ``[B, N]`` source distributions (the student's).
        q: ``[B, N]`` target distributions (the teacher's).
        cost: ``[B, N, N]`` cost matrices.
        reg: entropic regularisation ``λ`` (the kernel is ``exp(−M/λ)``).
        iters: Sinkhorn iterations.
    """
    kernel = torch.exp(-cost / reg)
    u = torch.full_like(p, 1.0 / p.shape[1]).unsqueeze(-1)
    p, q = p.unsqueeze(-1), q.unsqueeze(-1)
    for _ in range(iters):
        v = q / (kernel.transpose(1, 2) @ u + _SINKHORN_EPS)
        u = p / (kernel @ v + _SINKHORN_EPS)
    flow = u * kernel * v.transpose(1, 2)
    return (flow * cost).sum(dim=(1, 2)).mean()


def wkd_logit_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    cost: torch.Tensor,
    temperature: float = 2.0,
    gamma: float = 1.0,
    sinkhorn_reg: float = 0.05,
    sinkhorn_iters: int = 10,
    standardize: bool = False,
) -> torch.Tensor:
    """WKD-L as the authors' code computes it: ``target term + γ·WD(non-target distributions)``.

    The target class is distilled as in NKD (``−mean t_y·log s_y`` at temperature 1); the other
    classes' distributions (softmax over the ``C − 1`` non-target logits at ``T``) are compared by
    a discrete Wasserstein distance whose cost between two classes comes from the teacher
    (:func:`classifier_cost_matrix`), approximated by Sinkhorn. Departures from the paper's text,
    followed because the numbers come from the code: ``γ`` weights only the Wasserstein term
    (the paper weights the whole WKD-L loss), there is no ``T²`` factor, and the cost is clamped
    at 0 and offset by ``1e-8``.

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits.
        target: ``[B]`` class indices.
        cost: ``[C, C]`` class-to-class cost (:func:`classifier_cost_matrix`).
        temperature: temperature of the non-target distributions.
        gamma: weight of the Wasserstein term.
        sinkhorn_reg: entropic regularisation of Sinkhorn.
        sinkhorn_iters: Sinkhorn iterations.
        standardize: z-score each sample's logits first (logit standardisation).
    """
    check_temperature(temperature)
    check_logit_pair(student_logits, teacher_logits)
    num_classes = student_logits.shape[1]
    if cost.shape != (num_classes, num_classes):
        raise ValueError(f"the cost matrix {tuple(cost.shape)} must be [C, C] for {num_classes} classes")
    with autocast_off(student_logits):
        s, t = full_precision(student_logits), full_precision(teacher_logits)
        if standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        index = target.view(-1, 1)
        target_term = -(F.softmax(t, dim=1).gather(1, index) * F.log_softmax(s, dim=1).gather(1, index)).mean()
        p_s = F.softmax(drop_target_class(s, target) / temperature, dim=1)
        p_t = F.softmax(drop_target_class(t, target) / temperature, dim=1)
        keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, index, False)
        pair_keep = keep.unsqueeze(1) & keep.unsqueeze(2)
        batch_cost = full_precision(cost).to(s.dtype).expand(len(s), -1, -1)[pair_keep]
        batch_cost = F.relu(batch_cost.view(len(s), num_classes - 1, num_classes - 1)) + _SINKHORN_EPS
        wd = sinkhorn_distance(p_s, p_t, batch_cost, sinkhorn_reg, sinkhorn_iters)
    return target_term + gamma * wd


@register_loss("wkd")
class WKDLogitLoss(LogitLoss):
    """Module form of :func:`wkd_logit_loss`, its cost from the teacher's classifier, ``γ`` on a cosine decay.

    The distiller hands the teacher network to :meth:`bind_teacher` once, when it is built, and the
    loss reads its classifier ``head``; the cost matrix is a non-persistent buffer (rebuilt from the
    teacher, never stored).
    As in the authors' code, ``γ`` stays constant up to ``decay_start_epoch`` and then follows a
    half cosine to 0 at ``max_epochs``; epochs count from 1 there, from 0 in the context.

    Args:
        temperature, gamma, sinkhorn_reg, sinkhorn_iters, standardize: see :func:`wkd_logit_loss`.
        sharpen: ``κ`` of :func:`classifier_cost_matrix` (0 = plain ``1 − cos``).
        decay_start_epoch: last epoch (1-based) at full ``γ``; ``None`` = no decay.
        max_epochs: the run's epochs, where the decay reaches 0 (needed with ``decay_start_epoch``).
    """

    needs_labels = True
    cost: torch.Tensor

    def __init__(
        self,
        temperature: float = 2.0,
        gamma: float = 1.0,
        sinkhorn_reg: float = 0.05,
        sinkhorn_iters: int = 10,
        sharpen: float = 0.0,
        decay_start_epoch: int | None = None,
        max_epochs: int | None = None,
        standardize: bool = False,
    ) -> None:
        super().__init__(temperature, standardize)
        if decay_start_epoch is not None and (max_epochs is None or max_epochs <= decay_start_epoch):
            raise ValueError(
                f"the cosine decay of gamma from epoch {decay_start_epoch} needs max_epochs after it, got {max_epochs}"
            )
        if sinkhorn_reg <= 0 or sinkhorn_iters < 1:
            raise ValueError(f"Sinkhorn needs reg > 0 and iters >= 1, got {sinkhorn_reg} and {sinkhorn_iters}")
        self.gamma, self.sinkhorn_reg, self.sinkhorn_iters, self.sharpen = gamma, sinkhorn_reg, sinkhorn_iters, sharpen
        self.decay_start_epoch, self.max_epochs = decay_start_epoch, max_epochs
        self.register_buffer("cost", torch.empty(0), persistent=False)

    def bind_teacher(self, teacher: nn.Module) -> None:
        head = teacher.get_submodule("head") if "head" in dict(teacher.named_children()) else None
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"WKD-L takes its class costs from the weights of the teacher's linear classifier, but the "
                f"teacher's head is a {type(head).__name__}: use a teacher whose `head` is an nn.Linear"
            )
        weight = head.weight
        self.cost = classifier_cost_matrix(weight, self.sharpen).to(self.cost.device)

    def gamma_at(self, epoch: int) -> float:
        """``γ`` at the 0-based ``epoch``."""
        step = epoch + 1
        if self.decay_start_epoch is None or step <= self.decay_start_epoch:
            return self.gamma
        assert self.max_epochs is not None
        progress = (step - self.decay_start_epoch) / (self.max_epochs - self.decay_start_epoch)
        return 0.5 * self.gamma * (1.0 + math.cos(progress * math.pi))

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if self.cost.numel() == 0:
            raise RuntimeError("WKDLogitLoss.bind_teacher() was not called: its cost comes from the teacher")
        return wkd_logit_loss(
            student.logits,
            teacher.logits,
            context.labels,
            self.cost,
            self.temperature,
            self.gamma_at(context.epoch),
            self.sinkhorn_reg,
            self.sinkhorn_iters,
            self.standardize,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, gamma={self.gamma}, sinkhorn_reg={self.sinkhorn_reg}, "
            f"sinkhorn_iters={self.sinkhorn_iters}, sharpen={self.sharpen}, standardize={self.standardize}"
        )
