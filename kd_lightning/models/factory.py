"""``create_model``: the one door to every backbone (kd_lightning, torchvision, timm)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from kd_lightning.errors import ConfigError, as_config_error, check_keyword_arguments, unknown_name_error
from kd_lightning.models import _timm, _torchvision
from kd_lightning.models._registry import get_backbone_entry, list_backbones
from kd_lightning.models.classifier import Classifier, InputConfig
from kd_lightning.models.hf_encoder import build_hf
from kd_lightning.models.text_classifier import TextClassifier
from kd_lightning.models.weights import WeightsFile, load_weights
from kd_lightning.text.inputs import TextInputConfig

TORCHVISION_PREFIX = "torchvision/"
TIMM_PREFIX = "timm/"
HF_PREFIX = "hf/"


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool | str = False,
    weights_path: str | WeightsFile | None = None,
    in_chans: int | None = None,
    input_size: int | None = None,
    key_map: dict[str, str] | None = None,
    positional: bool = False,
    strict_head: bool = False,
    feature_layers: tuple[str, ...] | list[str] = (),
    head_norm: bool = False,
    **kwargs: Any,
) -> Classifier:
    """Build a classifier by name with a head of ``num_classes`` outputs.

    Names are looked up in kd_lightning's registry first, then torchvision, then timm; a
    ``torchvision/`` or ``timm/`` prefix picks the source explicitly, and ``hf/<folder or Hub
    name>`` builds a Hugging Face text encoder (a :class:`TextClassifier` over token ids).

    Args:
        name: registry name, e.g. ``resnet8x4``, ``resnet18``, ``timm/efficientnet_b0``.
        num_classes: outputs of the (new or kept) head.
        pretrained: ``True``/``"DEFAULT"`` or a named torchvision weights enum value
            (``"IMAGENET1K_V2"``); for timm, any truthy value loads its default weights.
        weights_path: a local state dict or Lightning checkpoint loaded over the built model (or its
            :class:`WeightsFile`, when the caller read it already).
        in_chans: input channels for networks that take it (small nets, timm).
        input_size: resize every input to ``input_size × input_size`` inside the network.
        feature_layers: pool these layers' outputs into the head's features (see ``Classifier``);
            the pretrained head, built for the trunk's own output, is then replaced.
        head_norm: a new head standardises its features first (``NormalizedLinear``).
        key_map, positional, strict_head: how ``weights_path`` is matched (see :func:`load_weights`).
        **kwargs: passed to the builder (e.g. ``width`` of the small CNN).
    """
    if input_size is not None and input_size < 1:
        raise ConfigError(f"input_size must be a positive number of pixels, got {input_size}")
    entry = get_backbone_entry(name)
    options = dict(kwargs)
    if in_chans is not None:
        options["in_chans"] = in_chans
    input_config: InputConfig | TextInputConfig | None
    if name.startswith(HF_PREFIX):
        with as_config_error():
            built = build_hf(name.removeprefix(HF_PREFIX), pretrained=pretrained, **options)
        input_config = built.input_config
    elif entry is not None:
        check_keyword_arguments(entry.builder, options, f"backbone {name!r}")
        # A builder's ValueError (no such pretrained weights, a depth it cannot build) is the config's to fix.
        with as_config_error():
            built = entry.builder(pretrained=pretrained, **options)
        input_config = built.input_config or entry.input_config
        if in_chans is not None and isinstance(input_config, InputConfig) and input_config.in_chans != in_chans:
            input_config = _with_channels(input_config, in_chans)
    elif name.startswith(TIMM_PREFIX) or (
        not name.startswith(TORCHVISION_PREFIX) and not _torchvision.has_model(name) and _timm.has_model(name)
    ):
        with as_config_error():
            built = _timm.build(name.removeprefix(TIMM_PREFIX), pretrained=pretrained, **options)
        input_config = built.input_config
    elif _torchvision.has_model(name.removeprefix(TORCHVISION_PREFIX)):
        with as_config_error():
            built = _torchvision.build(name.removeprefix(TORCHVISION_PREFIX), pretrained=pretrained, **options)
        input_config = built.input_config
    else:
        raise unknown_name_error("backbone", name, list_backbones() + _torchvision.model_names())
    if input_config is None:
        raise TypeError(f"backbone {name!r} was built without its input statistics (an InputConfig)")

    head = built.head
    if head is not None and (getattr(head, "out_features", None) != num_classes or feature_layers or head_norm):
        head = None
    model: Classifier
    if isinstance(input_config, TextInputConfig):
        if input_size is not None or feature_layers or head_norm:
            raise ConfigError(f"{name} reads token ids: input_size, feature_layers and head_norm are for image models")
        model = TextClassifier(built.backbone, built.feature_dim, num_classes, input_config, head, name, built.stages)
    else:
        model = Classifier(
            built.backbone,
            built.feature_dim,
            num_classes,
            input_config,
            head=head,
            name=name,
            stages=built.stages,
            input_size=input_size,
            feature_layers=tuple(feature_layers),
            head_norm=head_norm,
        )
    if weights_path is not None:
        report = load_weights(model, weights_path, strict_head=strict_head, key_map=key_map, positional=positional)
        rank_zero_info(f"{name}: {report}")
    return model


def _with_channels(config: InputConfig, in_chans: int) -> InputConfig:
    """Adapt per-channel statistics when a network is built for another channel count."""
    if len(config.mean) == in_chans:
        return replace(config, in_chans=in_chans)
    mean = sum(config.mean) / len(config.mean)
    std = sum(config.std) / len(config.std)
    return replace(config, in_chans=in_chans, mean=(mean,) * in_chans, std=(std,) * in_chans)
