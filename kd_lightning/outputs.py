"""What a network produced for one batch, and the label of a sample without one: shared by data,
losses, caches and modules."""

from __future__ import annotations

from typing import NamedTuple

import torch

# The label of a sample without one (an unlabeled transfer-set image): ``F.cross_entropy``'s
# default ``ignore_index``, so label losses skip it and distillation terms still see it.
IGNORE_LABEL = -100


class ModelOutputs(NamedTuple):
    """A network's logits for one batch and any tapped intermediate features, by layer name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = {}
