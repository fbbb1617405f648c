"""Small networks for small inputs (digits, MNIST-sized images): fast on a CPU."""

from __future__ import annotations

from torch import nn

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.models.classifier import InputConfig

GRAY = InputConfig(mean=(0.5,), std=(0.5,), in_chans=1)


@register_backbone("mlp", input_config=GRAY)
def mlp(
    pretrained: bool | str = False, in_chans: int = 1, input_size: int = 8, hidden: tuple[int, ...] = (64,)
) -> NetworkParts:
    """Multi-layer perceptron on flattened ``in_chans × input_size × input_size`` images."""
    _no_pretrained("mlp", pretrained)
    layers: list[nn.Module] = [nn.Flatten()]
    stages: list[str] = []
    width = in_chans * input_size * input_size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        stages.append(str(len(layers) - 1))
        width = h
    return NetworkParts(nn.Sequential(*layers), width, stages=tuple(stages))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_backbone("small_cnn", input_config=GRAY)
def small_cnn(pretrained: bool | str = False, in_chans: int = 1, width: int = 32, depth: int = 2) -> NetworkParts:
    """``depth`` stages of two 3×3 conv-BN-ReLU layers (width doubling, 2× pooling between)."""
    _no_pretrained("small_cnn", pretrained)
    layers: list[nn.Module] = []
    stages: list[str] = []  # the last ReLU of each stage (a flat Sequential keeps checkpoint keys stable)
    cin = in_chans
    for stage in range(depth):
        cout = width * 2**stage
        if stage:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        layers += _conv_bn(cin, cout) + _conv_bn(cout, cout)
        stages.append(str(len(layers) - 1))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return NetworkParts(nn.Sequential(*layers), cin, stages=tuple(stages))


def _no_pretrained(name: str, pretrained: bool | str) -> None:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights; train it or pass weights_path")
