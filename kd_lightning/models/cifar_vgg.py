"""CIFAR VGGs with BatchNorm as used in the distillation literature (RepDistiller's vgg8/11/13/16/19)."""

from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.models.cifar_resnet import CIFAR_INPUT
from kd_lightning.models.weight_init import kaiming_init_convs

# Conv widths of the five blocks; vgg8 is the one-conv-per-block student of RepDistiller.
_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class CifarVGG(nn.Module):
    """Five blocks of 3×3 conv-BN-ReLU layers, globally average-pooled to 512 features.

    On 32×32 inputs the first three blocks are each followed by 2× max pooling and the last two
    run at 4×4, as in RepDistiller (its ``pool3`` only acts on 64×64 inputs).

    Args:
        widths: conv widths per block.
        in_chans: input channels.
    """

    def __init__(self, widths: tuple[tuple[int, ...], ...], in_chans: int = 3) -> None:
        super().__init__()
        cin = in_chans
        for i, block in enumerate(widths):
            layers: list[nn.Module] = []
            for cout in block:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.num_blocks = len(widths)
        self.pool = nn.MaxPool2d(2, 2)
        self.head_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = cin
        kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"block{i}")(x)
            if i < 3 or (i == 3 and x.shape[-1] >= 8):
                x = self.pool(x)
        return self.head_pool(x)


def _register(name: str, widths: tuple[tuple[int, ...], ...]) -> None:
    def build(pretrained: bool | str = False, in_chans: int = 3) -> NetworkParts:
        if pretrained:
            raise ValueError(f"{name} has no downloadable weights; pass weights_path to a local file")
        net = CifarVGG(widths, in_chans)
        return NetworkParts(net, net.feature_dim, stages=tuple(f"block{i}" for i in range(net.num_blocks)))

    build.__name__ = name
    build.__doc__ = f"CIFAR {name.upper()} with BatchNorm (tap block0..block4)."
    register_backbone(name, input_config=CIFAR_INPUT)(build)


for _name, _widths in _CONFIGS.items():
    _register(_name, _widths)
