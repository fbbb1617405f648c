"""``ModelOutputs``: what a network produced for one batch, shared by losses, caches and modules."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutputs(NamedTuple):
    """A network's logits for one batch and any tapped intermediate features, by layer name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = {}
