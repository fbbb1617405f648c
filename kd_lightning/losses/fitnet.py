"""FitNets hint loss (Romero et al., ICLR 2015) with a learned regressor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.outputs import ModelOutputs


def hint_loss(regressed_student: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the regressed student hint and the teacher's guided layer.

    Romero et al. (2015), Eq. (3): ``½‖u_h(x) − r(v_g(x))‖²``. Like RepDistiller this averages
    over all elements instead of summing with ``½``, so the weight (100 on CIFAR-100) does not
    depend on the feature size.
    """
    if regressed_student.shape != teacher_features.shape:
        raise ValueError(
            f"regressed student features {tuple(regressed_student.shape)} and teacher features "
            f"{tuple(teacher_features.shape)} differ"
        )
    return F.mse_loss(full_precision(regressed_student), full_precision(teacher_features))


def build_regressor(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """A 1×1 conv + BN (feature maps) or a linear layer (vectors) from student to teacher width.

    Only the channel width is bridged: maps of different spatial size are refused, because
    resampling would silently change what "the same position" means for the hint.
    """
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        if student_shape[2:] != teacher_shape[2:]:
            raise ValueError(
                f"a 1x1 regressor cannot bridge student features {tuple(student_shape[1:])} to teacher features "
                f"{tuple(teacher_shape[1:])}: pick layers with the same spatial size"
            )
        return nn.Sequential(
            nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False), nn.BatchNorm2d(teacher_shape[1])
        )
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    raise ValueError(
        f"cannot regress student features {tuple(student_shape[1:])} onto teacher features "
        f"{tuple(teacher_shape[1:])}: both must be feature maps [B, C, H, W] or vectors [B, D]"
    )


@register_loss("fitnet")
class FitNetLoss(DistillationLoss):
    """Hint loss per tapped layer pair, each through its own regressor built from probed shapes.

    Args:
        student_layers: student layers giving the hints (e.g. ``[layer2]``).
        teacher_layers: teacher layers they must reproduce.
    """

    def __init__(
        self, student_layers: Sequence[str] = ("layer2",), teacher_layers: Sequence[str] = ("layer2",)
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)
        self.regressors = nn.ModuleList()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self.regressors = nn.ModuleList(
            build_regressor(student_shapes[s], teacher_shapes[t])
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, targets: torch.Tensor) -> torch.Tensor:
        if len(self.regressors) != len(self.student_layers):
            raise RuntimeError("FitNetLoss.build() was not called: its regressors need the probed feature shapes")
        pairs = self.feature_pairs(student, teacher)
        return sum(hint_loss(reg(s), t) for reg, (s, t) in zip(self.regressors, pairs, strict=True))
