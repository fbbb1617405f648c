"""Knowledge review (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021)."""

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

# The pyramid of hierarchical context loss: pooled sizes, each level weighted half the previous.
_HCL_LEVELS = (4, 2, 1)


def hcl_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss (Chen et al. 2021, Sec. 3.3), summed over the layer pairs.

    Per pair: the MSE of the maps, plus the MSEs of their ``4×4``, ``2×2`` and ``1×1`` average
    pools smaller than the map, weighted ``1/2, 1/4, 1/8``; divided by the sum of the weights.
    """
    losses = []
    for s, t in zip(students, teachers, strict=True):
        s, t = full_precision(s), full_precision(t)
        if s.shape != t.shape:
            raise ValueError(f"ReviewKD's fused student map {tuple(s.shape)} and teacher map {tuple(t.shape)} differ")
        loss, weight, total = F.mse_loss(s, t), 1.0, 1.0
        for size in _HCL_LEVELS:
            if size >= s.shape[2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            total += weight
        losses.append(loss / total)
    return torch.stack(losses).sum()


class ABF(nn.Module):
    """Attention-based fusion: a student map, merged with the residual from the deeper level, to a teacher map.

    ``conv1`` (1×1 conv + BN) brings the student map to the shared width; when there is a deeper
    level, its residual is upsampled (nearest) to this map's size and the two are mixed with two
    per-position attention weights from a 1×1 conv on their concatenation; the result, resized to
    the teacher's size, is the residual handed to the next (shallower) level, and ``conv2``
    (3×3 conv + BN) maps it to the teacher's width.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        squeeze = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        expand = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.conv1 = nn.Sequential(squeeze, nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(expand, nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (squeeze, expand):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, out_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level")
            residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, residual], dim=1))
            x = x * weights[:, :1] + residual * weights[:, 1:]
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), x


def _as_map(features: torch.Tensor) -> torch.Tensor:
    """Pooled ``[B, D]`` features as a ``[B, D, 1, 1]`` map, the deepest level of the review."""
    return features[:, :, None, None] if features.dim() == 2 else features


@register_loss("reviewkd")
class ReviewKDLoss(DistillationLoss):
    """:func:`hcl_loss` between the teacher's maps and the student's, fused from deep to shallow by :class:`ABF` s.

    The layers run from shallow to deep; the deepest is usually the pooled features
    (``backbone``), treated as a ``1×1`` map. Each student level is fused with all deeper ones
    (the review) before it is compared with the teacher's level of the same index. As in the
    references the teacher's stage maps are taken before their last ReLU
    (``layer1.0.relu@input``) and the student's after it, and the term is ramped up linearly:
    factor ``min((e + 1) / warmup_epochs, 1)`` at 0-based epoch ``e`` (mdistiller's; the authors'
    code starts at ``e / warmup_epochs``, 0 in the first epoch). The shared width of the fusions
    is ``min(512, C)`` of the deepest student level, as both build it.

    Args:
        student_layers: student layers, shallow to deep.
        teacher_layers: teacher layers, one per student layer.
        warmup_epochs: epochs of linear warm-up (20 in both references; 0 = off).
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1", "layer2", "layer3", "backbone"),
        teacher_layers: Sequence[str] = (
            "layer1.0.relu@input",
            "layer2.0.relu@input",
            "layer3.0.relu@input",
            "backbone",
        ),
        warmup_epochs: int = 20,
    ) -> None:
        super().__init__()
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.set_layers(student_layers, teacher_layers)
        self.warmup_epochs = warmup_epochs
        self.fusions = nn.ModuleList()
        self.out_sizes: list[int] = []

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_shapes = [_map_shape(student_shapes[name], name) for name in self.student_layers]
        t_shapes = [_map_shape(teacher_shapes[name], name) for name in self.teacher_layers]
        mid = min(512, s_shapes[-1][0])
        last = len(s_shapes) - 1
        # Stored deep to shallow, the order the review runs in; only the deepest level fuses nothing.
        self.fusions = nn.ModuleList(
            ABF(s_shapes[i][0], mid, t_shapes[i][0], fuse=i < last) for i in reversed(range(len(s_shapes)))
        )
        self.out_sizes = [t_shapes[i][1] for i in reversed(range(len(s_shapes)))]

    def warmup_factor(self, epoch: int) -> float:
        if self.warmup_epochs == 0:
            return 1.0
        return min((epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if len(self.fusions) != len(self.student_layers):
            raise RuntimeError("ReviewKDLoss.build() was not called: its fusions need the probed feature shapes")
        pairs = self.feature_pairs(student, teacher)
        students = [_as_map(s) for s, _ in reversed(pairs)]
        fused: list[torch.Tensor] = []
        residual = None
        for x, fusion, out_size in zip(students, self.fusions, self.out_sizes, strict=True):
            out, residual = fusion(x, residual, out_size)
            fused.insert(0, out)
        loss = hcl_loss(fused, [_as_map(t) for _, t in pairs])
        return self.warmup_factor(context.epoch) * loss

    def extra_repr(self) -> str:
        return f"warmup_epochs={self.warmup_epochs}"


def _map_shape(shape: torch.Size, name: str) -> tuple[int, int]:
    """``(channels, side)`` of a square map, or of pooled features as a ``1×1`` map."""
    if len(shape) == 2:
        return shape[1], 1
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"ReviewKD needs square maps or pooled vectors; layer {name!r} gives {tuple(shape[1:])}")
    return shape[1], shape[2]
