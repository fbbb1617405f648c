"""The one model type every kd_lightning module trains: input adapter + backbone + linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.errors import ConfigError
from kd_lightning.models.feature_taps import resolve_module, split_io
from kd_lightning.models.layer_pool import LayerPool


@dataclass(frozen=True)
class InputConfig:
    """How a backbone expects its input; travels with the model so data never has to guess.

    Args:
        mean: per-channel mean the weights were trained with (inputs arrive in [0, 1]).
        std: per-channel standard deviation.
        in_chans: channels the first layer expects; grayscale input is repeated to match.
        input_size: native (H, W) of the pretrained weights, for documentation and resizing configs.
    """

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    in_chans: int = 1
    input_size: tuple[int, int] | None = None

    def probe_batch(self, batch_size: int = 2) -> torch.Tensor:
        """Random ``[B, C, H, W]`` images in [0, 1] at the native size, for probing layer shapes.

        Raises:
            ValueError: no native size is declared, so the probe's size would be a guess.
        """
        if self.input_size is None:
            raise ValueError(
                "declares no input size, so a probe batch has no shape: set input_shape: [C, H, W] "
                "(e.g. [1, 8, 8] for digits)"
            )
        return torch.rand(batch_size, self.in_chans, *self.input_size)

    def token_mask(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Images have no tokens: the text counterpart marks a batch's real tokens."""
        return None


IMAGENET_INPUT = InputConfig(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), in_chans=3, input_size=(224, 224))


class InputAdapter(nn.Module):
    """Normalises [0, 1] images with the backbone's own statistics and matches its channel count.

    Normalisation lives in the model, not the data pipeline, because a teacher and its student
    may have been trained with different statistics, and an exported student then takes plain
    [0, 1] images. For the same reason each network may resize its input to its own
    ``resize_to`` resolution: a 224-px teacher and a 28-px student share one batch.

    Args:
        config: the backbone's input statistics and channels.
        resize_to: ``(H, W)`` every input is resized to (bilinear, antialiased), or ``None``.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, config: InputConfig, resize_to: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.in_chans = config.in_chans
        self.resize_to = resize_to
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
        if self.resize_to is not None and tuple(x.shape[-2:]) != self.resize_to:
            x = F.interpolate(x, size=self.resize_to, mode="bilinear", antialias=True, align_corners=False)
        if x.shape[1] != self.in_chans:
            if x.shape[1] != 1:
                raise ConfigError(
                    f"input has {x.shape[1]} channels but the backbone expects {self.in_chans}; "
                    "only 1-channel (grayscale) input is expanded automatically"
                )
            x = x.expand(-1, self.in_chans, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class NormalizedLinear(nn.Linear):
    """A linear layer over features standardised by running batch statistics (BatchNorm without affine).

    MAE's linear probe (He et al., 2022) puts this normalisation before its head: features pooled
    from several depths come at very different scales, and standardised ones train well at one
    learning rate. It is one layer, so the head stays linear in its inputs at inference.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.norm = nn.BatchNorm1d(in_features, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class Classifier(nn.Module):
    """A backbone that maps images to a feature vector, followed by a replaceable linear head.

    Args:
        backbone: module mapping ``[B, C, H, W]`` images to ``[B, feature_dim]`` features.
        feature_dim: width of the backbone output.
        num_classes: number of outputs of the head.
        input_config: the backbone's expected input statistics and channels.
        head: an existing head to keep (e.g. ImageNet classifier weights); a new ``nn.Linear``
            is created when omitted.
        name: registry name, recorded for checkpoints and reports.
        stages: trunk-relative names of the modules ending each stage (see ``NetworkParts.stages``).
        input_size: side every input is resized to inside the network (``None``: as given).
        feature_layers: layers (names, ``stage:N``, optionally ``@input``) whose globally pooled
            outputs, concatenated, replace the backbone's output as the head's features
            (:class:`~kd_lightning.models.layer_pool.LayerPool`); ``feature_dim`` is then probed.
        head_norm: standardise the features before a new head (:class:`NormalizedLinear`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        input_config: InputConfig,
        head: nn.Module | None = None,
        name: str = "",
        stages: tuple[str, ...] = (),
        input_size: int | None = None,
        feature_layers: tuple[str, ...] = (),
        head_norm: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.input_config = input_config
        self.stages = tuple(stages)
        self.input_size = input_size
        self.input_adapter = InputAdapter(input_config, None if input_size is None else (input_size, input_size))
        self.backbone = backbone
        self.feature_layers = tuple(feature_layers)
        self.layer_pool = LayerPool(self._trunk_refs(self.feature_layers)) if self.feature_layers else None
        if self.layer_pool is not None:
            side = input_size or (input_config.input_size[0] if input_config.input_size else 64)
            feature_dim = self.layer_pool.output_dim(backbone, torch.zeros(1, input_config.in_chans, side, side))
        self.feature_dim = feature_dim
        self.head_norm = head_norm
        self.head = head if head is not None else self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Linear:
        return (NormalizedLinear if self.head_norm else nn.Linear)(self.feature_dim, num_classes)

    def _trunk_refs(self, layers: tuple[str, ...]) -> list[str]:
        """Trunk-relative ``name@io`` of each layer reference; a ConfigError names one outside the trunk."""
        refs = []
        for layer in layers:
            found = resolve_module(self, layer)
            if found is None or not found[0].startswith("backbone."):
                raise ConfigError(
                    f"feature layer {layer!r} is not a layer of {self.name or 'the'} backbone; name a trunk module "
                    f"or a stage (stage:0 … stage:{len(self.stages) - 1}): {list(self.stages)}"
                )
            refs.append(f"{found[0].removeprefix('backbone.')}@{split_io(layer)[1]}")
        return refs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_adapter(x)
        return self.backbone(x) if self.layer_pool is None else self.layer_pool(self.backbone, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
