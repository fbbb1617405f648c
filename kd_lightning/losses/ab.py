"""Activation Boundaries (Heo et al., AAAI 2019): transfer which neurons fire, with a margin."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kd_lightning.losses._feature_maps import check_feature_maps, check_init_epochs
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

# RepDistiller's constant factor on the summed loss (its ``loss / 1000 * 3``).
_SCALE = 3 / 1000


def activation_boundary_loss(student: torch.Tensor, teacher: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Heo et al. (2019), Eq. (5): the alternative squared hinge on pre-activations, summed, per sample.

    ``(s + m)²`` where the teacher's neuron is off (``t ≤ 0``) but the student's is above ``−m``, and
    ``(s − m)²`` where the teacher's is on (``t > 0``) but the student's is below ``m``; summed over
    neurons and positions and divided by the batch size.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"connected student map {tuple(student.shape)} and teacher map {tuple(teacher.shape)} differ")
    s, t = full_precision(student), full_precision(teacher)
    off = (s + margin).pow(2) * ((s > -margin) & (t <= 0))
    on = (s - margin).pow(2) * ((s <= margin) & (t > 0))
    return (off + on).sum() / len(s)


def ab_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor], margin: float = 1.0) -> torch.Tensor:
    """RepDistiller's AB objective: layer ``i`` of ``n`` weighted ``2^(i − n + 1)`` (the deepest 1), times 3/1000."""
    n = len(students)
    losses = [
        2.0 ** (i - n + 1) * activation_boundary_loss(s, t, margin)
        for i, (s, t) in enumerate(zip(students, teachers, strict=True))
    ]
    return torch.stack(losses).sum() * _SCALE


def build_connector(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """Identity when the maps agree, else a 1×1 conv + BN to the teacher's width (RepDistiller's ``Connector``).

    The conv has no bias: the BatchNorm after it removes any.
    """
    if student_shape[1:] == teacher_shape[1:]:
        return nn.Identity()
    if student_shape[2:] != teacher_shape[2:]:
        raise ValueError(
            f"AB connects maps of one spatial size; student {tuple(student_shape[1:])} and teacher "
            f"{tuple(teacher_shape[1:])} differ: pick layers with the same spatial size"
        )
    return nn.Sequential(nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False), nn.BatchNorm2d(teacher_shape[1]))


@register_loss("ab")
class ABLoss(DistillationLoss):
    """:func:`ab_loss` between connected student and teacher pre-activations, optionally as an initialisation stage.

    Tap pre-ReLU maps, e.g. ``layer1.0.relu@input`` (a CIFAR ResNet's block output before its last
    ReLU, RepDistiller's ``preact`` features). Heo et al. and RepDistiller train the student on
    this loss alone first (RepDistiller: 30 epochs, student and connectors) and then on the labels
    only: ``init_epochs`` > 0 makes this term the whole objective for the first ``init_epochs``
    epochs (weight 1, RepDistiller's unweighted stage) and zero afterwards, so a 240-epoch schedule
    becomes ``max_epochs: 270`` with milestones shifted by 30. With ``init_epochs: 0`` the term is
    added to the others for the whole run. After the stage the connectors get no gradient, so
    under DDP use ``strategy: ddp_find_unused_parameters_true``.

    Args:
        student_layers: student pre-activation layers.
        teacher_layers: teacher pre-activation layers.
        margin: ``m`` of the hinge (1 in the paper and RepDistiller).
        init_epochs: epochs of the AB-only initialisation stage; 0 = single stage.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1.0.relu@input", "layer2.0.relu@input", "layer3.0.relu@input"),
        teacher_layers: Sequence[str] = ("layer1.0.relu@input", "layer2.0.relu@input", "layer3.0.relu@input"),
        margin: float = 1.0,
        init_epochs: int = 0,
    ) -> None:
        super().__init__()
        check_init_epochs(init_epochs)
        self.set_layers(student_layers, teacher_layers)
        self.margin, self.init_epochs = margin, init_epochs
        self.connectors = nn.ModuleList()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("AB", student_shapes, self.student_layers)
        check_feature_maps("AB", teacher_shapes, self.teacher_layers)
        self.connectors = nn.ModuleList(
            build_connector(student_shapes[s], teacher_shapes[t])
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        )

    def trains_alone(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if len(self.connectors) != len(self.student_layers):
            raise RuntimeError("ABLoss.build() was not called: its connectors need the probed feature shapes")
        if self.init_epochs and context.epoch >= self.init_epochs:
            return student.logits.new_zeros(())  # after the initialisation stage: labels only
        pairs = self.feature_pairs(student, teacher)
        connected = [connector(s) for connector, (s, _) in zip(self.connectors, pairs, strict=True)]
        return ab_loss(connected, [t for _, t in pairs], self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, init_epochs={self.init_epochs}"
