"""Variational Information Distillation (Ahn et al., CVPR 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._feature_maps import check_feature_maps, pool_to_smaller
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def vid_loss(
    predicted_mean: torch.Tensor, teacher_features: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Negative log-likelihood of the teacher's map under ``N(μ(s), σ²)``, constants dropped.

    Ahn et al. (2019), Eqs. (2) and (4): ``½ ((t − μ)²/σ² + log σ²)`` with a per-channel variance
    ``σ² = softplus(log_scale) + ε``, averaged over batch, channels and positions (the reference
    codes' reduction; the paper sums over channels and positions).

    Args:
        predicted_mean: ``μ(s)`` ``[B, C, H, W]``, the student's regressed map.
        teacher_features: ``t`` of the same shape.
        log_scale: ``[C]`` parameter of the variance.
        eps: floor of the variance.
    """
    if predicted_mean.shape != teacher_features.shape:
        raise ValueError(
            f"VID's predicted mean {tuple(predicted_mean.shape)} and the teacher's map "
            f"{tuple(teacher_features.shape)} differ"
        )
    with autocast_off(predicted_mean):
        variance = (F.softplus(full_precision(log_scale)) + eps).view(1, -1, 1, 1)
        mean, target = full_precision(predicted_mean), full_precision(teacher_features)
        return (0.5 * ((mean - target).pow(2) / variance + variance.log())).mean()


class VIDHead(nn.Module):
    """The student-side model of the teacher's map: a 1×1-conv MLP for ``μ`` and the variances' ``log_scale``.

    Three bias-free 1×1 convolutions with ReLUs between, the middle width the teacher's (as both
    references build it), and ``log_scale`` set so that the initial variance is ``init_variance``.
    """

    def __init__(self, in_channels: int, out_channels: int, init_variance: float, eps: float, learn_variance: bool):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
        )
        # softplus⁻¹(init_variance − eps), so that softplus(log_scale) + eps starts at init_variance.
        initial = math.log(math.expm1(init_variance - eps)) * torch.ones(out_channels)
        self.log_scale = nn.Parameter(initial, requires_grad=learn_variance)
        self.eps = eps

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """:func:`vid_loss` of the teacher's map under this head's model of it."""
        return vid_loss(self.mean(student), teacher, self.log_scale, self.eps)


@register_loss("vid")
class VIDLoss(DistillationLoss):
    """Sum of :func:`vid_loss` over the tapped layer pairs, each with its own :class:`VIDHead`.

    The student's map is average-pooled to the teacher's size first (or the teacher's to the
    student's, whichever is larger), as both references do. With ``learn_variance`` (the default)
    the variances are trained, as in the paper and RepDistiller, whose numbers the CRD paper
    reports; ``learn_variance: false`` is mdistiller's VID, whose ``log_scale`` tensors sit in a
    plain list, outside its optimizer, and so keep their initial value.

    Args:
        student_layers: student layers regressed onto the teacher's.
        teacher_layers: teacher layers they model.
        init_variance: initial ``σ²`` of every channel (5 in both references).
        eps: floor of the variance.
        learn_variance: train ``log_scale`` with the regressors.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        init_variance: float = 5.0,
        eps: float = 1e-5,
        learn_variance: bool = True,
    ) -> None:
        super().__init__()
        if not init_variance > eps:
            raise ValueError(f"init_variance must exceed eps={eps}, got {init_variance}")
        self.set_layers(student_layers, teacher_layers)
        self.init_variance, self.eps, self.learn_variance = init_variance, eps, learn_variance
        self.heads = nn.ModuleList()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("VID", student_shapes, self.student_layers)
        check_feature_maps("VID", teacher_shapes, self.teacher_layers)
        self.heads = nn.ModuleList(
            VIDHead(student_shapes[s][1], teacher_shapes[t][1], self.init_variance, self.eps, self.learn_variance)
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if len(self.heads) != len(self.student_layers):
            raise RuntimeError("VIDLoss.build() was not called: its heads need the probed feature shapes")
        pairs = self.feature_pairs(student, teacher)
        return torch.stack([head(*pool_to_smaller(s, t)) for head, (s, t) in zip(self.heads, pairs, strict=True)]).sum()

    def extra_repr(self) -> str:
        return f"init_variance={self.init_variance}, eps={self.eps}, learn_variance={self.learn_variance}"
