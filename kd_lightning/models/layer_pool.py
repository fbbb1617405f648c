"""Features pooled from several depths of a trunk: a linear probe that transfers to distant domains.

An ImageNet network's last layer encodes ImageNet's classes; on a distant domain (grayscale
clothing, medical scans) middle layers often transfer better, and a linear head over pooled
features of several depths beats one over the last layer alone (Head2Toe, Evci et al., ICML 2022).
:class:`LayerPool` gives a classifier those features in place of its trunk's output. The trunk
and its weights stay as they are, so checkpoint keys, stages and feature taps are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from kd_lightning.models.feature_taps import _hook, split_io


def global_pool(tensor: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C]`` (spatial mean); ``[B, N, C]`` tokens → ``[B, C]``; ``[B, C]`` unchanged."""
    if tensor.dim() == 4:
        return tensor.mean(dim=(2, 3))
    if tensor.dim() == 3:
        return tensor.mean(dim=1)
    if tensor.dim() == 2:
        return tensor
    raise ValueError(f"cannot pool a layer output of shape {tuple(tensor.shape)} into a feature vector")


class LayerPool(nn.Module):
    """Run a trunk and return the globally pooled outputs of ``layers``, concatenated in that order.

    Owns no parameters. Hooks are registered for the length of one call only, so the trunk called
    on its own (export, other taps) is untouched and the model stays picklable.

    Args:
        layers: trunk-relative module names, each optionally ending in ``@input`` or ``@output``.
    """

    def __init__(self, layers: Sequence[str]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("LayerPool needs at least one layer")
        self.layers = tuple(dict.fromkeys(layers))

    def forward(self, trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        modules = dict(trunk.named_modules())
        captured: dict[str, torch.Tensor] = {}
        handles = [
            _hook(modules[split_io(ref)[0]], split_io(ref)[1], partial(captured.__setitem__, ref))
            for ref in self.layers
        ]
        try:
            trunk(x)
        finally:
            for handle in handles:
                handle.remove()
        return torch.cat([global_pool(captured[ref]) for ref in self.layers], dim=1)

    @torch.no_grad()
    def output_dim(self, trunk: nn.Module, sample: torch.Tensor) -> int:
        """Width of :meth:`forward`'s output, probed in eval mode (BatchNorm statistics untouched)."""
        was_training = trunk.training
        trunk.eval()
        try:
            return int(self(trunk, sample).shape[1])
        finally:
            trunk.train(was_training)

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}"
