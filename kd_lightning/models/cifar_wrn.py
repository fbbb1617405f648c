"""CIFAR Wide ResNets of the distillation literature (Zagoruyko & Komodakis 2016; RepDistiller naming)."""

from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.models.cifar_resnet import CIFAR_INPUT
from kd_lightning.models.weight_init import kaiming_init_convs


class PreActBlock(nn.Module):
    """BN-ReLU-conv ×2 with an identity or 1×1-conv shortcut (WRN's basic block, no dropout)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        # With a projection the shortcut sees the pre-activated input, as in the WRN reference.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen``: a 3×3 stem, three groups of ``(depth − 4)/6`` pre-activation blocks.

    Args:
        depth: ``6n + 4``.
        widen: width multiplier ``k`` (group widths 16k, 32k, 64k).
        in_chans: input channels.
    """

    def __init__(self, depth: int, widen: int, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.block1 = self._group(widths[0], widths[1], n, 1)
        self.block2 = self._group(widths[1], widths[2], n, 2)
        self.block3 = self._group(widths[2], widths[3], n, 2)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = widths[3]
        kaiming_init_convs(self)

    @staticmethod
    def _group(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            *[PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.pool(self.relu(self.bn(x)))


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    def build(pretrained: bool | str = False, in_chans: int = 3) -> NetworkParts:
        if pretrained:
            raise ValueError(f"{name} has no downloadable weights; pass weights_path to a local file")
        net = WideResNet(depth, widen, in_chans)
        return NetworkParts(net, net.feature_dim, stages=("block1", "block2", "block3"))

    build.__name__ = name
    build.__doc__ = f"CIFAR Wide ResNet-{depth}-{widen} (tap block1/block2/block3)."
    register_backbone(name, input_config=CIFAR_INPUT)(build)


for _depth, _widen in ((16, 1), (16, 2), (16, 4), (28, 10), (40, 1), (40, 2), (40, 4)):
    _register(_depth, _widen)
