"""CIFAR-style ResNets of the distillation literature (RepDistiller/mdistiller naming and widths)."""

from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.models.classifier import InputConfig
from kd_lightning.models.weight_init import kaiming_init_convs

# CIFAR-100 statistics exactly as RepDistiller (dataset/cifar100.py) and mdistiller
# (mdistiller/dataset/cifar100.py) normalise with, so the recipes' inputs match theirs to the last digit.
CIFAR_INPUT = InputConfig(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), in_chans=3, input_size=(32, 32))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """A 3×3 stem and three stages of basic blocks (strides 1, 2, 2), globally pooled.

    Args:
        depth: 6n + 2 layers, n blocks per stage.
        widths: stem width and the three stage widths.
        in_chans: input channels.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], blocks, 1)
        self.layer2 = self._stage(widths[1], widths[2], blocks, 2)
        self.layer3 = self._stage(widths[2], widths[3], blocks, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = widths[3]
        kaiming_init_convs(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            *[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(blocks)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.pool(self.layer3(self.layer2(self.layer1(x))))


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    def build(pretrained: bool | str = False, in_chans: int = 3) -> NetworkParts:
        if pretrained:
            raise ValueError(f"{name} has no downloadable weights; pass weights_path to a local file")
        net = CifarResNet(depth, widths, in_chans)
        return NetworkParts(net, net.feature_dim, stages=("layer1", "layer2", "layer3"))

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, stage widths {widths[1:]}."
    register_backbone(name, input_config=CIFAR_INPUT)(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, (32, 64, 128, 256))
