"""``TextClassifier``: the text counterpart of ``Classifier``, reading one tensor of token ids."""

from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models.classifier import Classifier
from kd_lightning.text.inputs import TextInputConfig, TokenIds


class TextClassifier(Classifier):
    """A trunk mapping ``[B, L]`` token ids to ``[B, feature_dim]`` features, and a linear head.

    It is a :class:`Classifier` to everything downstream (checkpoints, the teacher, feature taps,
    report and export see ``backbone``, ``head``, ``stages`` and ``input_config`` as usual); only
    the input differs: token ids padded with the declared pad id, from which each trunk derives
    its own attention mask, so one tensor still carries the whole input.

    Args:
        backbone: module mapping token ids to features (it knows its pad id).
        feature_dim: width of the backbone output.
        num_classes: outputs of the head.
        input_config: pad id, longest sequence and vocabulary of the model.
        head: an existing head to keep; a new ``nn.Linear`` otherwise.
        name: registry name, recorded for checkpoints and reports.
        stages: trunk-relative names of the modules ending each stage (the encoder layers).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        input_config: TextInputConfig,
        head: nn.Module | None = None,
        name: str = "",
        stages: tuple[str, ...] = (),
    ) -> None:
        # Classifier.__init__ builds an image adapter from channel statistics a text model has none of.
        nn.Module.__init__(self)
        self.name = name
        self.num_classes = num_classes
        self.input_config = input_config  # type: ignore[assignment]  # the text kind of input config
        self.text_input = input_config
        self.stages = tuple(stages)
        self.input_size = None
        self.input_adapter = TokenIds(input_config)  # type: ignore[assignment]  # ids, not images
        self.backbone = backbone
        self.feature_layers = ()
        self.layer_pool = None
        self.feature_dim = feature_dim
        self.head_norm = False
        self.head = head if head is not None else self._new_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.input_adapter(x))
