"""timm models as kd_lightning backbones, when the optional ``timm`` extra is installed."""

from __future__ import annotations

from typing import Any, cast

from kd_lightning.models._registry import NetworkParts
from kd_lightning.models.classifier import InputConfig

try:
    import timm
except ImportError:  # timm is an optional extra
    timm = None  # type: ignore[assignment]


def has_model(name: str) -> bool:
    return timm is not None and bool(timm.list_models(name.removeprefix("timm/")))


def build(name: str, pretrained: bool | str = False, in_chans: int = 3, **kwargs) -> NetworkParts:
    if timm is None:
        raise ImportError(f"backbone {name!r} needs timm: pip install 'kd-lightning[timm]'")
    model = timm.create_model(name, pretrained=bool(pretrained), num_classes=0, in_chans=in_chans, **kwargs)
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean", (0.5,) * in_chans), cfg.get("std", (0.5,) * in_chans)
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    size = cfg.get("input_size", (in_chans, 224, 224))
    config = InputConfig(mean=tuple(mean), std=tuple(std), in_chans=in_chans, input_size=tuple(size[1:]))
    # timm types what it creates as nn.Module; every timm model has num_features.
    return NetworkParts(model, cast(int, model.num_features), input_config=config, stages=feature_stages(model))


def feature_stages(model) -> tuple[str, ...]:
    """The module names of timm's ``feature_info`` (one per feature stage), when the model declares it."""
    info = getattr(model, "feature_info", None) or []
    return tuple(stage["module"] for stage in info if isinstance(stage, dict) and stage.get("module"))
