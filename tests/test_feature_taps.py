"""Feature taps: names resolve in the trunk or from the root, errors list layers with shapes."""

from __future__ import annotations

import pytest
import torch

from kd_lightning.models import create_model
from kd_lightning.models.feature_taps import FeatureTaps, resolve_module


def test_taps_record_named_layers_only_while_called() -> None:
    model = create_model("resnet8x4", 100)
    sample = torch.rand(2, 3, 32, 32)
    taps = FeatureTaps(model, ["layer2", "backbone.layer3", "head"], sample)
    assert taps.shapes["layer2"] == torch.Size([2, 128, 16, 16])
    assert taps.shapes["backbone.layer3"] == torch.Size([2, 256, 8, 8])
    logits, features = taps(sample)
    assert set(features) == {"layer2", "backbone.layer3", "head"}
    torch.testing.assert_close(features["head"], logits)
    model(sample)
    assert taps._captured == {}
    taps.remove()
    assert taps(sample)[1] == {}


def test_probe_leaves_batchnorm_statistics_alone() -> None:
    model = create_model("resnet8", 10)
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    FeatureTaps(model, ["layer1"], torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(model.backbone.bn1.running_mean, before)
    assert model.training


def test_unknown_layer_lists_available_layers_and_shapes() -> None:
    model = create_model("resnet8", 10)
    with pytest.raises(ValueError, match="layer4") as err:
        FeatureTaps(model, ["layer4"], torch.rand(2, 3, 32, 32))
    message = str(err.value)
    assert "layer3: (64, 8, 8)" in message
    assert "layer2: (32, 16, 16)" in message
    assert "backbone: (64,)" in message


def test_a_module_inside_a_stage_resolves_from_the_stage() -> None:
    model = create_model("resnet8x4", 100)
    assert model.stages[-1] == "layer3"
    assert resolve_module(model, "stage:-1.0.conv1") == ("backbone.layer3.0.conv1", model.backbone.layer3[0].conv1)
    taps = FeatureTaps(model, ["stage:-1.0.conv1", "stage:0"], torch.rand(2, 3, 32, 32))
    assert taps.shapes["stage:-1.0.conv1"] == torch.Size([2, 256, 8, 8])
    with pytest.raises(ValueError, match="'stage:7.conv1' is not a stage"):
        resolve_module(model, "stage:7.conv1")
