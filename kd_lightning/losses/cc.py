"""Correlation Congruence (Peng et al., ICCV 2019), as RepDistiller implements it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def cc_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """``mean_i Σ_d |e_S − e_T|_{i,d} · |e_S − e_T|_{i+1,d}`` over consecutive samples of the batch.

    This is RepDistiller's ``Correlation`` (code its author had from the paper's authors), whose
    CIFAR-100 numbers the CRD paper reports. It departs from the paper's text (Eqs. 4-8), which
    matches the ``b × b`` correlation matrices of the embeddings under a Taylor-expanded Gaussian
    kernel: here the element-wise embedding differences of each sample and the next one in the
    batch are multiplied, so only ``b − 1`` neighbouring pairs enter and the value depends on
    the batch order.
    """
    if student_embedding.shape != teacher_embedding.shape:
        raise ValueError(
            f"student embedding {tuple(student_embedding.shape)} and teacher embedding "
            f"{tuple(teacher_embedding.shape)} differ"
        )
    delta = (full_precision(student_embedding) - full_precision(teacher_embedding)).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register_loss("cc")
class CCLoss(DistillationLoss):
    """:func:`cc_loss` between linear embeddings of one student and one teacher layer.

    Both embeddings are trainable linear maps to ``embed_dim`` (RepDistiller's ``LinearEmbed``
    on the pooled features, 128-d, weight 0.02 on CIFAR-100).

    Args:
        student_layers: the one student layer embedded (``backbone`` = pooled features).
        teacher_layers: the one teacher layer embedded.
        embed_dim: width of the two embeddings.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("backbone",),
        teacher_layers: Sequence[str] = ("backbone",),
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(student_layers) != 1:
            raise ValueError(f"CC embeds one layer per network, got student_layers={list(student_layers)}")
        self.set_layers(student_layers, teacher_layers)
        self.embed_dim = embed_dim
        self.student_embed: nn.Module = nn.Identity()
        self.teacher_embed: nn.Module = nn.Identity()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_dim = math.prod(student_shapes[self.student_layers[0]][1:])
        t_dim = math.prod(teacher_shapes[self.teacher_layers[0]][1:])
        self.student_embed = nn.Sequential(nn.Flatten(), nn.Linear(s_dim, self.embed_dim))
        self.teacher_embed = nn.Sequential(nn.Flatten(), nn.Linear(t_dim, self.embed_dim))

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if isinstance(self.student_embed, nn.Identity):
            raise RuntimeError("CCLoss.build() was not called: its embeddings need the probed feature shapes")
        ((s, t),) = self.feature_pairs(student, teacher)
        return cc_loss(self.student_embed(s), self.teacher_embed(t))

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}"
