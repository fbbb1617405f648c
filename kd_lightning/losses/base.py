"""The interface every distillation loss module implements."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class ModelOutputs(NamedTuple):
    """What a network produced for one batch: its logits and any tapped intermediate features."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = {}


class DistillationLoss(nn.Module):
    """A loss between student and teacher outputs; a thin module holding hyper-parameters.

    The math lives in a pure function next to each subclass so it can be tested on tensors
    alone. Feature losses list the layers they need in ``student_layers``/``teacher_layers``
    and may create trainable adapters in :meth:`build` once the tapped shapes are known.
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create shape-dependent parameters (adapters) from one probed batch; a no-op by default."""

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
