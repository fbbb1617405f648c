"""Any torchvision classification model as a kd_lightning backbone (weights via torchvision's API)."""

from __future__ import annotations

from functools import cache

import torchvision
from torch import nn

from kd_lightning.models._registry import NetworkParts
from kd_lightning.models.classifier import IMAGENET_INPUT, InputConfig


@cache
def model_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def has_model(name: str) -> bool:
    return name in model_names()


def resolve_weights(name: str, pretrained: bool | str) -> torchvision.models.WeightsEnum | None:
    """Map ``True``/``"DEFAULT"``/``"IMAGENET1K_V2"`` to the model's torchvision weights enum."""
    if pretrained is False or pretrained is None:
        return None
    enum = torchvision.models.get_model_weights(name)
    key = "DEFAULT" if pretrained is True else str(pretrained).split(".")[-1]
    try:
        return enum[key]
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(f"{name} has no weights {pretrained!r}; choose one of: {choices}") from None


def build(name: str, pretrained: bool | str = False, in_chans: int = 3, **kwargs) -> NetworkParts:
    """Build a torchvision model, cut off its last linear layer and return it as a trunk."""
    if in_chans != 3:
        raise ValueError(
            f"torchvision's {name} takes 3-channel input; drop in_chans (grayscale is expanded "
            "automatically) or use a kd_lightning small net"
        )
    weights = resolve_weights(name, pretrained)
    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    head_name, head = _last_linear(model, name)
    model.set_submodule(head_name, nn.Identity())
    input_config = IMAGENET_INPUT if weights is None else input_config_of(weights)
    return NetworkParts(
        model,
        head.in_features,
        head=head if weights is not None else None,
        input_config=input_config,
        stages=_stages(model),
    )


def _stages(model: nn.Module) -> tuple[str, ...]:
    """ResNet-family stages (``layer1``…``layer4``); other torchvision families declare none yet."""
    return tuple(name for name in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, name))


def input_config_of(weights: torchvision.models.WeightsEnum) -> InputConfig:
    """Mean/std and crop size from the weights' own preprocessing preset (no download needed)."""
    preset = weights.transforms()
    size = tuple(getattr(preset, "crop_size", [224, 224]))
    return InputConfig(mean=tuple(preset.mean), std=tuple(preset.std), in_chans=3, input_size=(size[0], size[-1]))


def _last_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"torchvision's {name} has no linear classifier to replace")
    return linears[-1]
