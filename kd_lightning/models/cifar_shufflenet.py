"""CIFAR ShuffleNetV1 of the distillation literature (Zhang et al., CVPR 2018; RepDistiller's ``ShuffleV1``)."""

from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.models.cifar_resnet import CIFAR_INPUT

# RepDistiller's ``ShuffleV1``: 3 groups, a 24-channel stem, three stages of 4, 8 and 4 units.
STEM_WIDTH = 24
GROUPS = 3
STAGE_WIDTHS = (240, 480, 960)
STAGE_BLOCKS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups, so the next grouped conv sees every group's output."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """Grouped 1×1 conv → channel shuffle → 3×3 depthwise conv → grouped 1×1 conv, plus a shortcut.

    A stride-2 unit (a stage's first) concatenates its 3×3 average-pooled input to the branch,
    so the branch only adds ``width − cin`` channels; the others add an identity shortcut.
    As in RepDistiller, the depthwise conv is followed by a ReLU, and one ``relu`` module is
    called three times so ``<stage>.<k>.relu@input`` taps the unit's pre-activation output.

    Args:
        cin: input channels.
        width: output channels of the unit.
        stride: 2 at a stage's start, else 1.
        groups: groups of the 1×1 convs.
        squeeze_groups: groups of the first 1×1 conv (1 on the stem, whose 24 channels are too few to split).
    """

    def __init__(self, cin: int, width: int, stride: int, groups: int, squeeze_groups: int) -> None:
        super().__init__()
        branch = width - cin if stride == 2 else width
        mid = branch // 4
        self.stride = stride
        self.squeeze_groups = squeeze_groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=squeeze_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.relu(self.bn1(self.conv1(x))), self.squeeze_groups)
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        shortcut = self.shortcut(x)
        return self.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


class CifarShuffleNetV1(nn.Module):
    """A 1×1 stem and three stages of shuffle units, each halving the resolution, globally pooled.

    On 32×32 inputs the stages run at 16×16, 8×8 and 4×4. The weights keep PyTorch's default
    initialisation: RepDistiller's ``ShuffleV1`` has none of its own, unlike its ResNets, WRNs and VGGs.

    Args:
        in_chans: input channels.
    """

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, STEM_WIDTH, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_WIDTH)
        self.relu = nn.ReLU(inplace=True)
        widths, blocks = (STEM_WIDTH, *STAGE_WIDTHS), STAGE_BLOCKS
        self.layer1 = self._stage(widths[0], widths[1], blocks[0])
        self.layer2 = self._stage(widths[1], widths[2], blocks[1])
        self.layer3 = self._stage(widths[2], widths[3], blocks[2])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = widths[3]

    @staticmethod
    def _stage(cin: int, width: int, blocks: int) -> nn.Sequential:
        units = []
        for i in range(blocks):
            unit_in = cin if i == 0 else width
            squeeze_groups = 1 if unit_in == STEM_WIDTH else GROUPS
            units.append(ShuffleUnit(unit_in, width, 2 if i == 0 else 1, GROUPS, squeeze_groups))
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.pool(self.layer3(self.layer2(self.layer1(x))))


@register_backbone("shufflev1", input_config=CIFAR_INPUT)
def shufflev1(pretrained: bool | str = False, in_chans: int = 3) -> NetworkParts:
    """CIFAR ShuffleNetV1 (3 groups, stage widths 240/480/960; tap layer1/layer2/layer3)."""
    if pretrained:
        raise ValueError("shufflev1 has no downloadable weights; pass weights_path to a local file")
    net = CifarShuffleNetV1(in_chans)
    return NetworkParts(net, net.feature_dim, stages=("layer1", "layer2", "layer3"))
