"""CIFAR nets of the distillation literature: parameter counts as published, forward shapes, taps."""

from __future__ import annotations

import pytest
import torch

from kd_lightning.models import create_model
from kd_lightning.models.feature_taps import FeatureTaps

# Millions of parameters with a 100-class head, as tabulated by CRD/RepDistiller and DKD/mdistiller.
PAPER_PARAMS_M = {
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "vgg13": 9.46,
    "vgg8": 3.96,
    "resnet32x4": 7.43,
    "resnet8x4": 1.23,
    "resnet56": 0.86,
    "resnet20": 0.28,
}


@pytest.mark.parametrize(("name", "millions"), PAPER_PARAMS_M.items())
def test_parameter_counts_match_the_papers(name: str, millions: float) -> None:
    model = create_model(name, 100)
    # Papers print two decimals, some rounded and some truncated.
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


@pytest.mark.parametrize(
    ("name", "layers", "channels"),
    [
        ("wrn_16_2", ["block1", "block2", "block3"], [32, 64, 128]),
        ("vgg8", ["block1", "block2", "block3", "block4"], [128, 256, 512, 512]),
    ],
)
def test_stage_outputs_are_tappable(name: str, layers: list[str], channels: list[int]) -> None:
    model = create_model(name, 100)
    taps = FeatureTaps(model, layers, torch.rand(2, 3, 32, 32))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert [taps.shapes[layer][1] for layer in layers] == channels
