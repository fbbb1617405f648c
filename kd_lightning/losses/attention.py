"""Attention Transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``Q = vec(F_sum^p(A)) / ‖·‖₂``: the channel-mean of ``|A|^p``, flattened and L2-normalised.

    Zagoruyko & Komodakis (2017), §3.1 and Eq. (2). The channel mean (instead of the sum)
    only rescales the map, which the normalisation removes; it makes maps of networks with
    different widths comparable without an adapter.
    """
    if features.dim() != 4:
        raise ValueError(f"attention transfer needs feature maps [B, C, H, W], got shape {tuple(features.shape)}")
    return F.normalize(full_precision(features).abs().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Squared distance of the normalised attention maps, averaged over batch and positions.

    Eq. (2) of the paper writes ``β/2 · ‖Q_S/‖Q_S‖ − Q_T/‖Q_T‖‖_p``; like the authors' code
    (and RepDistiller) this uses the mean squared difference, with ``β = 1000`` on CIFAR. A
    larger map is average-pooled to the smaller one's size, as in RepDistiller.
    """
    s_hw, t_hw = student_features.shape[-2:], teacher_features.shape[-2:]
    if s_hw != t_hw:
        size = (min(s_hw[0], t_hw[0]), min(s_hw[1], t_hw[1]))
        student_features = F.adaptive_avg_pool2d(student_features, size)
        teacher_features = F.adaptive_avg_pool2d(teacher_features, size)
    return (attention_map(student_features, p) - attention_map(teacher_features, p)).pow(2).mean()


@register_loss("at")
class AttentionTransferLoss(DistillationLoss):
    """Sum of :func:`at_loss` over the tapped layer pairs (e.g. the three stage outputs).

    Args:
        student_layers: student layers whose attention maps are trained.
        teacher_layers: teacher layers they are matched to.
        p: power of the activations in the attention map (2 in the paper).
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        p: float = 2.0,
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)
        self.p = p

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for s, t in zip(self.student_layers, self.teacher_layers, strict=True):
            if len(student_shapes[s]) != 4 or len(teacher_shapes[t]) != 4:
                raise ValueError(
                    f"attention transfer needs feature maps; student {s!r} gives {tuple(student_shapes[s][1:])} and "
                    f"teacher {t!r} gives {tuple(teacher_shapes[t][1:])}"
                )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        return torch.stack([at_loss(s, t, self.p) for s, t in self.feature_pairs(student, teacher)]).sum()

    def extra_repr(self) -> str:
        return f"p={self.p}"
