"""CA-MKD's intermediate-feature term (Zhang et al., ICASSP 2022): several teachers' layers, confidence-weighted.

As the reference code (Rorozhl/CA-MKD: ``models/util.py`` ``CalWeight`` and ``Embed``,
``distiller_zoo/CAMKD.py``, ``helper/loops.py`` with ``--distill inter``) computes it: the student's
layer is resized to each teacher's (average-pooled when larger, bilinearly upsampled when smaller),
embedded per teacher by a 1×1 conv (with bias) + BatchNorm + ReLU to that teacher's width, and
regressed onto the teacher's layer by a per-sample mean squared error. The sample's weight for
teacher ``k`` is ``(1 − softmax_k(CE_k)) / (K − 1)``, ``CE_k`` the cross-entropy with the label of
teacher ``k``'s own classifier (its global average pool and head) applied to the *embedded student*
map; the weights are not detached, so the gradient also flows through them and that classifier. The
sum is divided by batch × teachers, and the term is left out of the first epoch.
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
from kd_lightning.outputs import ModelOutputs, member_name, member_outputs


def camkd_feature_loss(
    embedded: Sequence[torch.Tensor],
    teacher_maps: Sequence[torch.Tensor],
    logits_on_student: Sequence[torch.Tensor],
    labels: torch.Tensor,
) -> torch.Tensor:
    """``Σ_k Σ_b w_kb · mean((e_kb − t_kb)²) / (B · K)``, ``w_kb = (1 − softmax_k(CE(z_kb, y_b))) / (K − 1)``.

    Args:
        embedded: ``K`` maps ``[B, C_k, H_k, W_k]``: the student's layer embedded for each teacher.
        teacher_maps: ``K`` teacher layers of the same shapes.
        logits_on_student: ``K`` ``[B, classes]``: each teacher's classifier on its embedded map.
        labels: ``[B]`` class indices.
    """
    num_teachers, batch = len(embedded), labels.shape[0]
    with autocast_off(labels):
        ce = torch.stack([F.cross_entropy(full_precision(z), labels, reduction="none") for z in logits_on_student])
        weights = (1.0 - ce.softmax(0)) / (num_teachers - 1)
        mse = torch.stack(
            [
                (full_precision(e) - full_precision(t)).pow(2).reshape(batch, -1).mean(-1)
                for e, t in zip(embedded, teacher_maps, strict=True)
            ]
        )
    return (weights * mse).sum() / (batch * num_teachers)


def resize_to(student_map: torch.Tensor, side: int) -> torch.Tensor:
    """The student's map at the teacher's ``side × side``: average-pooled down, bilinearly up (the reference's)."""
    if student_map.shape[-1] >= side:
        return F.adaptive_avg_pool2d(student_map, (side, side))
    return F.interpolate(student_map, size=(side, side), mode="bilinear")


@register_loss("camkd_feature")
class CAMKDFeatureLoss(DistillationLoss):
    """CA-MKD's feature term over every teacher of a list (``teacher: [...]``): see the module docstring.

    The teachers' classifiers are borrowed when the distiller binds them, not held as submodules:
    they stay frozen, out of the optimizer and out of the student's checkpoints.

    Args:
        student_layer: the student's tapped layer; its last stage by default, as CA-MKD (vgg8's ``block4``).
        teacher_layer: each teacher's tapped layer, which its classifier reads after global pooling; the
            last stage by default, as CA-MKD (resnet32x4's ``layer3``).
        start_epoch: the first (0-based) epoch the term counts in; the reference leaves it out of its first.
    """

    needs_labels = True

    def __init__(self, student_layer: str = "stage:-1", teacher_layer: str = "stage:-1", start_epoch: int = 1) -> None:
        super().__init__()
        self.set_layers([student_layer], [teacher_layer])
        self.start_epoch = start_epoch
        self.embeds = nn.ModuleList()
        self._classifiers: list[nn.Module] = []

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """One embedding per teacher, from the student's width to that teacher's, read from the tapped shapes."""
        student = student_shapes[self.student_layers[0]]
        shapes: list[torch.Size] = []
        while member_name(len(shapes), self.teacher_layers[0]) in teacher_shapes:
            shapes.append(teacher_shapes[member_name(len(shapes), self.teacher_layers[0])])
        if len(shapes) < 2 or len(student) != 4 or any(len(shape) != 4 for shape in shapes):
            raise ValueError(
                "camkd_feature weighs several teachers' feature maps [B, C, H, W]: give `teacher` a list of "
                f"teachers and feature-map layers (got student {tuple(student)}, teachers {[tuple(s) for s in shapes]})"
            )
        self.embeds = nn.ModuleList(
            nn.Sequential(nn.Conv2d(student[1], shape[1], 1), nn.BatchNorm2d(shape[1]), nn.ReLU(inplace=True))
            for shape in shapes
        )

    def bind_teacher(self, teacher: nn.Module) -> None:
        """Borrow each teacher's classifier (``head``), which must read the tapped layer's channels."""
        networks = list(teacher) if isinstance(teacher, nn.ModuleList) else [teacher]
        for network, embed in zip(networks, self.embeds, strict=True):
            width = cast(nn.Conv2d, cast(nn.Sequential, embed)[0]).out_channels
            if getattr(network, "feature_dim", width) != width:
                raise ValueError(
                    f"camkd_feature applies each teacher's classifier to its layer {self.teacher_layers[0]!r}, "
                    f"whose {width} channels its {network.feature_dim}-wide head cannot read: tap the last stage"
                )
        self._classifiers = [cast(nn.Module, network.head) for network in networks]

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        student_map = student.features[self.student_layers[0]]
        if context.epoch < self.start_epoch:
            return student_map.new_zeros((), dtype=torch.float32)
        teacher_maps = [member.features[self.teacher_layers[0]] for member in member_outputs(teacher)]
        embedded = [
            embed(resize_to(student_map, t.shape[-1])) for embed, t in zip(self.embeds, teacher_maps, strict=True)
        ]
        logits = [classifier(e.mean((2, 3))) for classifier, e in zip(self._classifiers, embedded, strict=True)]
        return camkd_feature_loss(embedded, teacher_maps, logits, context.labels)

    def extra_repr(self) -> str:
        return f"start_epoch={self.start_epoch}"
