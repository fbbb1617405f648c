"""``ModelSpec``: how a config names a network and where its weights come from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kd_lightning.models.classifier import Classifier
from kd_lightning.models.factory import create_model
from kd_lightning.models.weights import WeightsFile


@dataclass
class ModelSpec:
    """A network by registry name plus the source of its weights.

    Args:
        name: registry name (kd_lightning, torchvision or timm; see ``create_model``).
        pretrained: ``True``/``"DEFAULT"`` or a named torchvision weights enum value.
        weights_path: a local state dict or Lightning checkpoint (of any kd_lightning module).
        kwargs: extra builder arguments, e.g. ``{width: 16}`` for ``small_cnn``.
        key_map: rename the keys of ``weights_path`` by prefix, e.g. ``{"encoder.": "backbone."}``.
        positional: map the tensors of ``weights_path`` onto the model by order (weights exported
            from another implementation of the same architecture).
        input_size: the resolution this network runs at: every input is resized to
            ``input_size × input_size`` inside it (e.g. a 112-px pretrained teacher beside a 28-px
            student on one batch). ``None`` takes the batch as it comes.
        feature_layers: layers whose globally pooled outputs, concatenated, are the head's
            features instead of the trunk's last output (``[stage:3, stage:4]``: a multi-depth
            linear probe, which transfers better to domains far from the pretraining data).
        head_norm: standardise the features before the head (BatchNorm without affine, as MAE's
            linear probe), so features of different depths and scales train at one learning rate.
    """

    name: str
    pretrained: bool | str = False
    weights_path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    key_map: dict[str, str] | None = None
    positional: bool = False
    input_size: int | None = None
    feature_layers: list[str] | None = None
    head_norm: bool = False

    def build(self, num_classes: int, strict_head: bool = False, weights: WeightsFile | None = None) -> Classifier:
        """Build the network; ``strict_head`` refuses weights whose head has another class count.

        Args:
            weights: the file at ``weights_path``, when the caller read it already (it is read once).
        """
        return create_model(
            self.name,
            num_classes,
            pretrained=self.pretrained,
            weights_path=weights if weights is not None else self.weights_path,
            input_size=self.input_size,
            key_map=self.key_map,
            positional=self.positional,
            strict_head=strict_head,
            feature_layers=tuple(self.feature_layers or ()),
            head_norm=self.head_norm,
            **self.kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the spec can live in a checkpoint loaded with ``weights_only=True``."""
        return asdict(self)


def as_spec(value: ModelSpec | str | dict[str, Any]) -> ModelSpec:
    """Accept a spec, a bare name, or the dict stored in a checkpoint's hyper-parameters."""
    if isinstance(value, ModelSpec):
        return value
    if isinstance(value, str):
        return ModelSpec(value)
    return ModelSpec(**value)
