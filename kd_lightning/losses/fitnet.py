"""FitNets hint loss (Romero et al., ICLR 2015) with a learned regressor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
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


def build_regressor(student_shape: torch.Size, teacher_shape: torch.Size, final_relu: bool = False) -> nn.Module:
    """A 1×1 conv + BN (feature maps) or a linear layer (vectors) from student to teacher width.

    ``final_relu`` ends it with a ReLU, as RepDistiller's and mdistiller's ``ConvReg`` do: the
    teacher's hint is a post-ReLU activation, so the regressed hint is kept in the same range.
    Only the channel width is bridged: maps of different spatial size are refused, because
    resampling would silently change what "the same position" means for the hint.
    """
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        if student_shape[2:] != teacher_shape[2:]:
            raise ValueError(
                f"a 1x1 regressor cannot bridge student features {tuple(student_shape[1:])} to teacher features "
                f"{tuple(teacher_shape[1:])}: pick layers with the same spatial size"
            )
        layers = [nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False), nn.BatchNorm2d(teacher_shape[1])]
    elif len(student_shape) == 2 and len(teacher_shape) == 2:
        layers = [nn.Linear(student_shape[1], teacher_shape[1])]
    else:
        raise ValueError(
            f"cannot regress student features {tuple(student_shape[1:])} onto teacher features "
            f"{tuple(teacher_shape[1:])}: both must be feature maps [B, C, H, W] or vectors [B, D]"
        )
    if final_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@register_loss("fitnet")
class FitNetLoss(DistillationLoss):
    """Hint loss per tapped layer pair, each through its own regressor built from probed shapes.

    By default this is RepDistiller's single-stage FitNets: the hint term is added to the other
    terms (CE) for the whole run. ``hint_epochs`` > 0 gives the two-stage training of Romero et
    al. (2015, Sec. 2.2): for the first ``hint_epochs`` epochs the hint term is the whole
    objective, so only the student's layers up to the guided layer and the regressor receive a
    gradient (the others get none, so SGD leaves them, weight decay included, untouched; their
    BatchNorm statistics still follow the batches); from then on the hint term is zero and the
    other terms (the paper's stage 2: KD) train the whole student. The epoch count includes the
    hint stage: a 240-epoch schedule after 30 hint epochs is ``max_epochs: 270`` with milestones
    shifted by 30. Under DDP the parameters left out of stage 1 need
    ``strategy: ddp_find_unused_parameters_true``.

    Args:
        student_layers: student layers giving the hints (e.g. ``[layer2]``).
        teacher_layers: teacher layers they must reproduce.
        final_relu: end each regressor with a ReLU, as RepDistiller's ``ConvReg`` does.
        hint_epochs: epochs of hint-only pretraining (stage 1); 0 = single stage.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer2",),
        teacher_layers: Sequence[str] = ("layer2",),
        final_relu: bool = False,
        hint_epochs: int = 0,
    ) -> None:
        super().__init__()
        if hint_epochs < 0:
            raise ValueError(f"hint_epochs must be >= 0, got {hint_epochs}")
        self.set_layers(student_layers, teacher_layers)
        self.final_relu, self.hint_epochs = final_relu, hint_epochs
        self.regressors = nn.ModuleList()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        self.regressors = nn.ModuleList(
            build_regressor(student_shapes[s], teacher_shapes[t], self.final_relu)
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        )

    def trains_alone(self, epoch: int) -> bool:
        return epoch < self.hint_epochs

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if len(self.regressors) != len(self.student_layers):
            raise RuntimeError("FitNetLoss.build() was not called: its regressors need the probed feature shapes")
        if self.hint_epochs and context.epoch >= self.hint_epochs:
            return student.logits.new_zeros(())  # stage 2 of the two-stage training: no hint
        pairs = self.feature_pairs(student, teacher)
        return torch.stack([hint_loss(reg(s), t) for reg, (s, t) in zip(self.regressors, pairs, strict=True)]).sum()

    def extra_repr(self) -> str:
        return f"final_relu={self.final_relu}, hint_epochs={self.hint_epochs}"
