"""Flow of Solution Procedure (Yim et al., "A Gift from Knowledge Distillation", CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kd_lightning.losses._feature_maps import check_feature_maps, check_init_epochs, pool_to_smaller
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """``G_{ij} = mean_{h,w} F¹_i(h, w) · F²_j(h, w)``, ``[B, C_top, C_bottom]`` (Yim et al., Eq. 1).

    The larger of the two maps is average-pooled to the smaller's size first, as RepDistiller does.
    """
    bottom, top = pool_to_smaller(bottom, top)
    with autocast_off(bottom):
        bottom, top = full_precision(bottom).flatten(2), full_precision(top).flatten(2)
        return torch.bmm(top, bottom.transpose(1, 2)) / bottom.shape[2]


def fsp_loss(student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over consecutive layer pairs of the mean squared difference of the FSP matrices.

    Yim et al. (2017), Eq. (2) weighs each pair's squared Frobenius distance by ``λ_i/N``; like
    RepDistiller this averages over the matrix entries and the batch and weighs every pair 1.
    Student and teacher layers need the same channel counts, pair by pair.
    """
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise ValueError("FSP needs the same number (at least two) of student and teacher layers")
    losses = []
    for i in range(len(student_features) - 1):
        g_s = fsp_matrix(student_features[i], student_features[i + 1])
        g_t = fsp_matrix(teacher_features[i], teacher_features[i + 1])
        losses.append((g_s - g_t).pow(2).mean())
    return torch.stack(losses).sum()


@register_loss("fsp")
class FSPLoss(DistillationLoss):
    """:func:`fsp_loss` over the tapped layers, optionally as an initialisation stage.

    The paper (Sec. 3.3) and RepDistiller train the student on the FSP loss alone first and then
    on the labels: ``init_epochs`` > 0 makes this term the whole objective for the first
    ``init_epochs`` epochs (only the student layers up to the last tapped one receive a gradient;
    a weight of 1, since RepDistiller's stage sums the FSP terms unweighted) and zero afterwards.
    RepDistiller runs that stage with a separate optimizer for 30 epochs before its 240; here it
    is the first 30 of 270 epochs, milestones shifted by 30. With ``init_epochs: 0`` the term is
    added to the others for the whole run.

    Args:
        student_layers: student layers, in depth order (RepDistiller: the stem and the three stages).
        teacher_layers: teacher layers with the same channel counts.
        init_epochs: epochs of the FSP-only initialisation stage; 0 = single stage.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        init_epochs: int = 0,
    ) -> None:
        super().__init__()
        check_init_epochs(init_epochs)
        if len(student_layers) < 2:
            raise ValueError(f"FSP relates consecutive layers: give at least two, got {list(student_layers)}")
        self.set_layers(student_layers, teacher_layers)
        self.init_epochs = init_epochs

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("FSP", student_shapes, self.student_layers)
        check_feature_maps("FSP", teacher_shapes, self.teacher_layers)
        for s, t in zip(self.student_layers, self.teacher_layers, strict=True):
            if student_shapes[s][1] != teacher_shapes[t][1]:
                raise ValueError(
                    f"FSP compares matrices of channel pairs: student {s!r} has {student_shapes[s][1]} channels "
                    f"but teacher {t!r} has {teacher_shapes[t][1]}; pick layers of equal width"
                )

    def trains_alone(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if self.init_epochs and context.epoch >= self.init_epochs:
            return student.logits.new_zeros(())  # after the initialisation stage: labels only
        pairs = self.feature_pairs(student, teacher)
        return fsp_loss([s for s, _ in pairs], [t for _, t in pairs])

    def extra_repr(self) -> str:
        return f"init_epochs={self.init_epochs}"
