"""Multi-depth pooled features (``feature_layers``) and the standardised head (``head_norm``)."""

import pytest
import torch
from torch import nn

from kd_lightning.errors import ConfigError
from kd_lightning.models import ModelSpec
from kd_lightning.models.classifier import NormalizedLinear
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.models.weights import CheckpointError

SPEC = dict(name="small_cnn", kwargs={"width": 4, "depth": 2})


def test_features_are_the_pooled_outputs_of_the_named_layers_in_order() -> None:
    torch.manual_seed(0)
    network = ModelSpec(**SPEC, feature_layers=["stage:-1", "stage:0"]).build(10).eval()
    x = torch.rand(3, 1, 28, 28)
    taps = FeatureTaps(network, ["stage:0", "stage:-1"], x)
    _, tapped = taps(x)
    expected = torch.cat([tapped["stage:-1"].mean((2, 3)), tapped["stage:0"].mean((2, 3))], dim=1)
    assert network.feature_dim == expected.shape[1]
    assert torch.allclose(network.forward_features(x), expected)
    assert torch.allclose(network(x), network.head(expected))


def test_pooling_changes_no_weight_names_and_leaves_no_hooks_behind() -> None:
    plain = ModelSpec(**SPEC).build(10)
    pooled = ModelSpec(**SPEC, feature_layers=["stage:0"]).build(10)
    assert set(plain.state_dict()) == set(pooled.state_dict())
    pooled(torch.rand(2, 1, 28, 28))
    assert not any(m._forward_hooks for m in pooled.modules())


def test_a_layer_outside_the_trunk_is_refused_with_the_stages_named() -> None:
    with pytest.raises(ConfigError, match=r"feature layer 'head' is not a layer of .*stage:0"):
        ModelSpec(**SPEC, feature_layers=["head"]).build(10)
    with pytest.raises(ValueError, match="not a stage"):
        ModelSpec(**SPEC, feature_layers=["stage:9"]).build(10)


def test_normalized_head_standardises_with_running_statistics() -> None:
    torch.manual_seed(0)
    head = NormalizedLinear(5, 3)
    features = torch.randn(64, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 100.0]) + 7.0
    head.norm.momentum = None  # cumulative average: one batch gives its exact statistics
    head.train()(features)
    head.eval()
    mean, var = features.mean(0), features.var(0, unbiased=True)
    expected = nn.functional.linear((features - mean) / torch.sqrt(var + head.norm.eps), head.weight, head.bias)
    assert torch.allclose(head(features), expected, atol=1e-5)


def test_head_norm_survives_a_checkpoint_round_trip(tmp_path) -> None:
    spec = ModelSpec(**SPEC, feature_layers=["stage:0", "stage:1"], head_norm=True)
    network = spec.build(10)
    network.head.train()(torch.randn(32, network.feature_dim) * 5)
    path = tmp_path / "net.pt"
    torch.save(network.state_dict(), path)
    loaded = ModelSpec(**SPEC, feature_layers=["stage:0", "stage:1"], head_norm=True, weights_path=str(path)).build(
        10, strict_head=True
    )
    assert torch.equal(loaded.head.norm.running_var, network.head.norm.running_var)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), network.eval()(x))
    with pytest.raises(CheckpointError, match="head tensors this model lacks .*head_norm"):
        ModelSpec(**SPEC, feature_layers=["stage:0", "stage:1"], weights_path=str(path)).build(10, strict_head=True)
