"""Overhaul of Feature Distillation (Heo et al., ICCV 2019), as mdistiller implements it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._feature_maps import check_feature_maps
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.models.feature_taps import resolve_module
from kd_lightning.outputs import ModelOutputs

# Below this probability of a negative pre-activation the margin is -3σ (the reference's cut-off).
_MIN_NEGATIVE_MASS = 1e-3


def ofd_margins(bn_weight: torch.Tensor, bn_bias: torch.Tensor) -> torch.Tensor:
    """Per-channel margin ``m = E[x | x < 0]`` of pre-activations ``x ~ N(β, γ²)`` (Heo et al. 2019, Eq. 2).

    ``m = β − |γ| φ(β/|γ|) / Φ(−β/|γ|)``, the mean of a normal truncated to its negative part, read off
    the teacher's BatchNorm before the ReLU; ``−3|γ|`` where ``Φ(−β/|γ|) ≤ 0.001``, as the references do.
    """
    std, mean = bn_weight.detach().double().abs(), bn_bias.detach().double()
    ratio = -mean / std
    negative_mass = torch.special.ndtr(ratio)
    truncated = mean - std * torch.exp(-ratio.pow(2) / 2) / math.sqrt(2 * math.pi) / negative_mass
    return torch.where(negative_mass > _MIN_NEGATIVE_MASS, truncated, -3 * std)


def ofd_loss(student: torch.Tensor, teacher: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """The partial L2 distance of Heo et al. (2019), Eq. (4), summed over channels and positions, per sample.

    Where the teacher's pre-activation is positive the squared difference counts; where it is
    negative (below the margin ``m`` of its channel, for the first term) only a student above it
    is penalised, towards ``max(t, m)``. ``margins`` is ``[C]``; the teacher's map is average-pooled
    to the student's size.
    """
    s = full_precision(student)
    t = F.adaptive_avg_pool2d(full_precision(teacher), (s.shape[-2], s.shape[-1]))
    m = margins.to(s.dtype).view(1, -1, 1, 1)
    loss = (
        (s - m).pow(2) * ((s > m) & (t <= m))
        + (s - t).pow(2) * ((s > t) & (t > m) & (t <= 0))
        + (s - t).pow(2) * (t > 0)
    )
    return loss.sum() / len(s)


def build_ofd_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """1×1 conv + BN to the teacher's width, the conv drawn from ``N(0, 2/C_out)`` as the references do."""
    conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


@register_loss("ofd")
class OFDLoss(DistillationLoss):
    """:func:`ofd_loss` on pre-ReLU maps, layer ``i`` of ``n`` weighted ``1/2^(n−1−i)`` (the deepest 1).

    Tap pre-activations (``layer1.0.relu@input``: a CIFAR ResNet block's output before its last
    ReLU, mdistiller's ``preact_feats``) and name, in ``teacher_batchnorms``, the teacher's
    BatchNorm whose ``γ, β`` give each layer's margins (mdistiller: each stage's last ``bn2``,
    before the residual sum). The margins are read from the teacher when the distiller binds it
    (:meth:`bind_teacher`). Departures from the references: the teacher stays in eval mode,
    whereas mdistiller's ``OFD.train()`` and the authors' code put it in train mode, so their
    teacher maps use batch statistics.

    Args:
        student_layers: student pre-activation layers.
        teacher_layers: teacher pre-activation layers.
        teacher_batchnorms: the teacher BatchNorm layer behind each teacher layer.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1.0.relu@input", "layer2.0.relu@input", "layer3.0.relu@input"),
        teacher_layers: Sequence[str] = ("layer1.0.relu@input", "layer2.0.relu@input", "layer3.0.relu@input"),
        teacher_batchnorms: Sequence[str] = ("layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"),
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)
        if len(teacher_batchnorms) != len(teacher_layers):
            raise ValueError(
                f"OFD needs one teacher BatchNorm per teacher layer, got {list(teacher_batchnorms)} for "
                f"{list(teacher_layers)}"
            )
        self.teacher_batchnorms = tuple(teacher_batchnorms)
        self.connectors = nn.ModuleList()
        self.margins: list[torch.Tensor] = []

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("OFD", student_shapes, self.student_layers)
        check_feature_maps("OFD", teacher_shapes, self.teacher_layers)
        self.connectors = nn.ModuleList(
            build_ofd_connector(student_shapes[s][1], teacher_shapes[t][1])
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        )

    def bind_teacher(self, teacher: nn.Module) -> None:
        margins = []
        for name in self.teacher_batchnorms:
            found = resolve_module(teacher, name)
            if found is None or not isinstance(found[1], nn.BatchNorm2d):
                raise ValueError(f"OFD's teacher_batchnorms names {name!r}, which is not a BatchNorm2d of the teacher")
            margins.append(ofd_margins(found[1].weight, found[1].bias).float())
        self.margins = margins

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if len(self.connectors) != len(self.student_layers) or len(self.margins) != len(self.teacher_layers):
            raise RuntimeError("OFDLoss needs build() and bind_teacher(): its connectors and margins come from them")
        pairs = self.feature_pairs(student, teacher)
        n = len(pairs)
        losses = [
            ofd_loss(connector(s), t, margins.to(s.device)) / 2 ** (n - 1 - i)
            for i, (connector, margins, (s, t)) in enumerate(zip(self.connectors, self.margins, pairs, strict=True))
        ]
        return torch.stack(losses).sum()

    def extra_repr(self) -> str:
        return f"teacher_batchnorms={list(self.teacher_batchnorms)}"
