"""Backbones: one registry for kd_lightning's own nets, torchvision and timm models."""

from kd_lightning.errors import CheckpointError
from kd_lightning.models import (  # noqa: F401  (register the built-in nets)
    cifar_resnet,
    cifar_shufflenet,
    cifar_vgg,
    cifar_wrn,
    efficientnet_lite,
    hf_encoder,
    small,
    text_students,
)
from kd_lightning.models._registry import NetworkParts, list_backbones, register_backbone
from kd_lightning.models.classifier import IMAGENET_INPUT, Classifier, InputConfig
from kd_lightning.models.factory import create_model
from kd_lightning.models.spec import ModelSpec, as_spec
from kd_lightning.models.weights import (
    LoadReport,
    WeightsFile,
    load_weights,
    read_state_dict,
    read_weights_file,
    remap_positional,
    remap_prefixes,
)

__all__ = [
    "CheckpointError",
    "Classifier",
    "IMAGENET_INPUT",
    "InputConfig",
    "LoadReport",
    "ModelSpec",
    "NetworkParts",
    "WeightsFile",
    "as_spec",
    "create_model",
    "list_backbones",
    "load_weights",
    "read_state_dict",
    "read_weights_file",
    "register_backbone",
    "remap_positional",
    "remap_prefixes",
]
