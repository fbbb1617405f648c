"""Helpers shared by the feature-map losses: matching map sizes and the initialisation stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pool_to_smaller(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the taller of two ``[B, C, H, W]`` maps to the other's ``H × H``.

    RepDistiller's and mdistiller's rule for NST, VID, FT and FSP: only the heights are compared
    and the pooled map is square, which is what their CIFAR networks (square maps) need.
    """
    s_h, t_h = student.shape[2], teacher.shape[2]
    if s_h > t_h:
        student = F.adaptive_avg_pool2d(student, (t_h, t_h))
    elif s_h < t_h:
        teacher = F.adaptive_avg_pool2d(teacher, (s_h, s_h))
    return student, teacher


def check_feature_maps(name: str, shapes: dict[str, torch.Size], layers: tuple[str, ...]) -> None:
    """Refuse tapped layers that are not ``[B, C, H, W]`` maps, naming the layer."""
    for layer in layers:
        if len(shapes[layer]) != 4:
            raise ValueError(
                f"{name} needs feature maps [B, C, H, W], but layer {layer!r} gives {tuple(shapes[layer][1:])}: "
                "tap a convolutional stage"
            )


def check_init_epochs(init_epochs: int) -> None:
    if init_epochs < 0:
        raise ValueError(f"init_epochs must be >= 0, got {init_epochs}")
