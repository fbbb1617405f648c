"""The CIFAR ShuffleNetV1 student: RepDistiller's ``ShuffleV1`` unit for unit, its feature taps, and a
WKD-L step under a WRN-40-2 teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.data.batch import Batch
from kd_lightning.losses import classifier_cost_matrix, wkd_logit_loss
from kd_lightning.models import ModelSpec, create_model
from kd_lightning.models.cifar_shufflenet import channel_shuffle
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.modules import DistillationModule

# RepDistiller's ShuffleV1(num_classes=100): stem 3·24 + BN 48, the 16 units' grouped/depthwise convs and BNs,
# and the 960 → 100 linear head (96,100), counted from its models/ShuffleNetv1.py.
REFERENCE_PARAMETERS = 949_258
STAGES = ["layer1", "layer2", "layer3"]
STAGE_SHAPES = [(240, 16, 16), (480, 8, 8), (960, 4, 4)]


def test_parameter_count_is_the_references() -> None:
    model = create_model("shufflev1", 100)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMETERS
    assert model.feature_dim == 960 and model.stages == tuple(STAGES)


def test_units_are_built_as_the_reference_builds_them() -> None:
    backbone = create_model("shufflev1", 100).backbone
    assert [len(getattr(backbone, stage)) for stage in STAGES] == [4, 8, 4]
    first, second = backbone.layer1[0], backbone.layer1[1]
    # The stem's 24 channels meet an ungrouped 1x1 conv; the concatenated shortcut leaves 240 - 24 to the branch.
    assert (first.conv1.groups, first.conv1.out_channels, first.conv3.out_channels) == (1, 54, 216)
    assert (second.conv1.groups, second.conv1.out_channels, second.conv3.groups) == (3, 60, 3)
    assert first.conv2.groups == first.conv2.out_channels == 54 and first.conv2.stride == (2, 2)
    assert [backbone.layer2[0].conv3.out_channels, backbone.layer3[0].conv3.out_channels] == [240, 480]
    assert backbone.conv1.kernel_size == (1, 1) and backbone.conv1.out_channels == 24


def test_channel_shuffle_interleaves_the_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0.0, 2.0, 4.0, 1.0, 3.0, 5.0]
    assert torch.equal(channel_shuffle(x, 1), x)


def test_stages_and_pre_activations_are_tappable() -> None:
    torch.manual_seed(0)
    model = create_model("shufflev1", 100).eval()
    preacts = [f"{stage}.{blocks - 1}.relu@input" for stage, blocks in zip(STAGES, (4, 8, 4), strict=True)]
    images = torch.rand(2, 3, 32, 32)
    taps = FeatureTaps(model, STAGES + preacts, images)
    logits, features = taps(images)
    assert logits.shape == (2, 100)
    assert [tuple(taps.shapes[name][1:]) for name in STAGES] == STAGE_SHAPES
    for stage, preact in zip(STAGES, preacts, strict=True):
        # Each stage's output is its last unit's pre-activation after the ReLU (RepDistiller's preact features).
        assert torch.equal(features[stage], F.relu(features[preact]))
        assert (features[preact] < 0).any()
    # The head reads the globally pooled last stage.
    torch.testing.assert_close(logits, model.head(features["layer3"].mean(dim=(2, 3))))


def test_a_training_step_reaches_every_parameter_and_lowers_the_loss() -> None:
    torch.manual_seed(0)
    model = create_model("shufflev1", 100).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8) * 12
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        losses.append(loss.item())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
    assert losses[2] < losses[0]


def test_wkd_distils_wrn_40_2_into_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "wrn_40_2.pt"
    torch.save(ModelSpec("wrn_40_2").build(100).state_dict(), weights)
    kwargs = {"temperature": 6.0, "gamma": 200.0, "sharpen": 1.0}
    terms = [{"name": "ce"}, {"name": "wkd", "kwargs": kwargs}]
    module = DistillationModule(
        ModelSpec("shufflev1"), ModelSpec("wrn_40_2", weights_path=str(weights)), 100, losses=terms
    )
    cost = module.loss_terms["wkd"].cost
    # The cost comes from the WRN-40-2 teacher's 100 classifier rows (128-d), whatever the student's width.
    torch.testing.assert_close(cost, classifier_cost_matrix(module.teacher.network.head.weight, 1.0))
    module.log = module.log_dict = lambda *a, **k: None
    module.train()
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 17, 42, 99])
    loss = module.training_step(Batch(labels, images=images), 0)
    with torch.no_grad():
        student, teacher = module.network(images), module.teacher(images).logits
        expected = F.cross_entropy(student, labels) + wkd_logit_loss(student, teacher, labels, cost, 6.0, 200.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert module.network.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.teacher.parameters())


def test_refuses_downloadable_weights() -> None:
    with pytest.raises(ValueError, match="shufflev1 has no downloadable weights"):
        create_model("shufflev1", 100, pretrained=True)
