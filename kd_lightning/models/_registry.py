"""One registry for every backbone kd_lightning can build, whatever its origin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import nn

from kd_lightning.models.classifier import InputConfig
from kd_lightning.text.inputs import TextInputConfig


class NetworkParts(NamedTuple):
    """What a registered builder returns: the parts a :class:`Classifier` is assembled from.

    Attributes:
        backbone: the trunk, mapping images to ``[B, feature_dim]`` features (the original classifier removed).
        feature_dim: width of the backbone output.
        head: the original pretrained classifier, kept when its class count matches the request.
        input_config: overrides the registered input config (e.g. read from pretrained weights); a
            :class:`~kd_lightning.text.inputs.TextInputConfig` makes the model a text classifier.
        stages: trunk-relative names of the modules that end each stage, shallow to deep (like
            timm's ``feature_info``), so feature losses can name ``stage:1`` or ``stage:-1`` on any
            architecture.
    """

    backbone: nn.Module
    feature_dim: int
    head: nn.Module | None = None
    input_config: InputConfig | TextInputConfig | None = None
    stages: tuple[str, ...] = ()


BackboneBuilder = Callable[..., NetworkParts]
DEFAULT_INPUT = InputConfig()


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: its builder and the input it expects."""

    name: str
    builder: BackboneBuilder
    input_config: InputConfig | TextInputConfig
    description: str = ""


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str | None = None, *, input_config: InputConfig | TextInputConfig = DEFAULT_INPUT
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a builder ``fn(pretrained=False, in_chans=..., **kwargs) -> NetworkParts`` by name.

    Adding a network to kd_lightning is one function with this decorator; ``create_model`` then
    builds it by name from Python and from YAML configs.
    """

    def decorator(fn: BackboneBuilder) -> BackboneBuilder:
        key = name or fn.__name__
        if key in _BACKBONES:
            raise ValueError(f"backbone {key!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _BACKBONES[key] = BackboneEntry(key, fn, input_config, doc[0] if doc else "")
        return fn

    return decorator


def get_backbone_entry(name: str) -> BackboneEntry | None:
    return _BACKBONES.get(name)


def list_backbones() -> list[str]:
    """Names of the networks registered by kd_lightning itself (torchvision/timm names work too)."""
    return sorted(_BACKBONES)
