"""TinyBERT's transformer losses (Jiao et al., 2020): hidden-state and attention-map MSE over real tokens.

The hidden-state loss is a registered term (``hidden_mse``) over tapped layers. The attention-map
loss is a function only: layer taps record a module's output tensor, and a Hugging Face encoder
returns its attention probabilities only under eager attention, beside the layer's output, after
dropout, and never the pre-softmax scores TinyBERT matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def _token_mean(squared: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``squared`` over its last dimension, then over the positions ``weights`` keeps."""
    per_position = squared.mean(dim=-1)
    if weights is None:
        return per_position.mean()
    weights = weights.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def hidden_state_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean‖H_S Wᵀ + b − H_T‖²`` over the real tokens (TinyBERT's hidden-state loss, Eq. 8).

    The learned map ``W`` (``[D_T, D_S]``) lets a narrow student match a wide teacher; without it
    the widths must agree. Padding positions would otherwise teach the student to copy the
    teacher's arbitrary states at tokens no prediction reads.

    Args:
        student: ``[B, L, D_S]`` hidden states of one student layer (or ``[B, D_S]`` pooled ones).
        teacher: ``[B, L, D_T]`` hidden states of the teacher layer it mimics.
        weight, bias: the linear map from student to teacher width (``None``: identity).
        mask: ``[B, L]`` 1 at real tokens, 0 at padding (``None``: every position).
    """
    projected = student if weight is None else F.linear(student, weight, bias)
    if projected.shape != teacher.shape:
        raise ValueError(f"student states {tuple(projected.shape)} do not match the teacher's {tuple(teacher.shape)}")
    return _token_mean((projected - teacher).pow(2), mask)


def attention_map_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/h) Σᵢ MSE(A_iˢ, A_iᵀ)`` over the query-key pairs of real tokens (TinyBERT's attention loss, Eq. 7).

    TinyBERT matches the attention scores head by head, so student and teacher need the same
    number of heads; pairs that involve padding are left out (their scores are masked anyway).

    Args:
        student: ``[B, h, L, L]`` attention maps of one student layer.
        teacher: ``[B, h, L, L]`` attention maps of the teacher layer it mimics.
        mask: ``[B, L]`` 1 at real tokens, 0 at padding (``None``: every pair).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"attention maps {tuple(student.shape)} and {tuple(teacher.shape)} differ: TinyBERT's loss needs "
            "the same heads and length in student and teacher"
        )
    squared = (student - teacher).pow(2)  # [B, h, L, L]
    if mask is None:
        return squared.mean()
    pairs = (mask[:, None, :, None] * mask[:, None, None, :]).to(squared.dtype).expand_as(squared)
    return (squared * pairs).sum() / pairs.sum().clamp(min=1.0)


@register_loss("hidden_mse")
class HiddenStateLoss(DistillationLoss):
    """TinyBERT's hidden-state loss per tapped layer pair, each through its own learned linear map.

    Per-token states ``[B, L, D]`` (a transformer layer's output, the embeddings) are compared
    over the batch's real tokens (:attr:`StepContext.token_mask`); pooled ``[B, D]`` vectors
    (``backbone``) over the samples. TinyBERT maps every student layer ``m`` to teacher layer
    ``g(m)``, e.g. a 2-layer student of a 4-layer BERT::

        losses:
          - {name: kd, weight: 1.0}
          - name: hidden_mse
            weight: 1.0
            kwargs: {student_layers: [stage:0, stage:1], teacher_layers: [stage:1, stage:3]}

    Args:
        student_layers: student layers whose outputs are matched (e.g. ``[stage:-1]``, ``[embed]``).
        teacher_layers: teacher layers they must reproduce (e.g. ``[stage:-1]``, ``[model.embeddings]``).
        project: map each student layer to its teacher's width with a learned linear layer
            (TinyBERT's ``W_h``); ``False`` compares the states directly, so the widths must agree.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("stage:-1",),
        teacher_layers: Sequence[str] = ("stage:-1",),
        project: bool = True,
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)
        self.project = project
        self.projections = nn.ModuleList()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        maps = []
        for s, t in zip(self.student_layers, self.teacher_layers, strict=True):
            student, teacher = student_shapes[s], teacher_shapes[t]
            if len(student) != len(teacher):
                raise ValueError(
                    f"hidden_mse compares student layer {s!r} {tuple(student[1:])} with teacher layer {t!r} "
                    f"{tuple(teacher[1:])}: pair per-token states with per-token states, pooled vectors with pooled"
                )
            if not self.project and student[-1] != teacher[-1]:
                raise ValueError(
                    f"hidden_mse without project compares widths {student[-1]} ({s!r}) and {teacher[-1]} ({t!r}) "
                    "directly: pick layers of one width or set project: true"
                )
            maps.append(nn.Linear(student[-1], teacher[-1]))
        if self.project:
            self.projections = nn.ModuleList(maps)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if self.project and len(self.projections) != len(self.student_layers):
            raise RuntimeError("HiddenStateLoss.build() was not called: its maps need the probed feature widths")
        pairs = self.feature_pairs(student, teacher)
        maps = [cast(nn.Linear, m) for m in self.projections] if self.project else [None] * len(pairs)
        terms = []
        for (s, t), projection in zip(pairs, maps, strict=True):
            mask = context.token_mask if s.dim() == 3 else None
            weight, bias = (None, None) if projection is None else (projection.weight, projection.bias)
            with autocast_off(s):
                terms.append(hidden_state_mse(full_precision(s), full_precision(t), weight, bias, mask))
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f"project={self.project}"
