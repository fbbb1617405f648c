"""The backbone registry: every registered net builds, names resolve, weights load safely."""

import pytest
import torch

from kd_lightning.models import CheckpointError, Classifier, InputConfig, create_model, list_backbones, load_weights
from kd_lightning.models._registry import get_backbone_entry

# Parameter counts of the CIFAR-100 networks in the RepDistiller/mdistiller tables (millions).
PAPER_PARAMS = {"resnet8x4": 1.23, "resnet32x4": 7.43, "resnet20": 0.28, "resnet56": 0.86}


# Text backbones read token ids: tests/test_text.py runs each of them.
IMAGE_BACKBONES = [n for n in list_backbones() if isinstance(get_backbone_entry(n).input_config, InputConfig)]


@pytest.mark.parametrize("name", IMAGE_BACKBONES)
def test_every_registered_backbone_builds_and_runs(name: str) -> None:
    model = create_model(name, num_classes=7)
    assert isinstance(model, Classifier)
    size = 8 if name == "mlp" else 32
    x = torch.rand(2, model.input_config.in_chans, size, size)
    assert model(x).shape == (2, 7)
    assert model.forward_features(x).shape == (2, model.feature_dim)


@pytest.mark.parametrize(("name", "millions"), PAPER_PARAMS.items())
def test_cifar_resnets_match_paper_parameter_counts(name: str, millions: float) -> None:
    params = sum(p.numel() for p in create_model(name, num_classes=100).parameters())
    assert params / 1e6 == pytest.approx(millions, abs=0.01)


def test_torchvision_names_build_with_a_replaced_head() -> None:
    model = create_model("resnet18", num_classes=5)
    assert model.feature_dim == 512 and model.head.out_features == 5
    assert model.input_config.mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 5), "grayscale input expands to RGB"


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="Did you mean: .*resnet32"):
        create_model("resnet33", num_classes=10)


def test_input_adapter_normalises_with_backbone_statistics() -> None:
    model = create_model("small_cnn", num_classes=3)
    x = torch.full((1, 1, 4, 4), 0.75)
    assert torch.allclose(model.input_adapter(x), torch.full_like(x, 0.5))


def test_load_weights_finds_lightning_prefix_and_skips_a_new_head(tmp_path) -> None:
    source = create_model("small_cnn", num_classes=10, width=8)
    torch.save({"state_dict": {f"network.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "m.ckpt")
    target = create_model("small_cnn", num_classes=4, width=8)
    report = load_weights(target, tmp_path / "m.ckpt")
    assert report.prefix == "network." and report.skipped_head == ["head.weight", "head.bias"]
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value)


def test_load_weights_refuses_another_architecture_and_missing_files(tmp_path) -> None:
    torch.save(create_model("small_cnn", num_classes=10, width=8).state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(CheckpointError, match="another architecture"):
        load_weights(create_model("resnet8", num_classes=10), tmp_path / "cnn.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(create_model("resnet8", num_classes=10), tmp_path / "missing.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(create_model("resnet8", num_classes=10), tmp_path / "broken.pt")
