"""The ImageNet recipes parse with their published hyper-parameters and train a few steps on a synthetic folder.

The recipes ask for 8 GPUs and torchvision's pretrained ResNet-34 (a download); here they run on
the CPU, one process, with an untrained teacher, 32-pixel crops and a 10-class JPEG folder
prepared into LitData chunks. Everything else (losses, optimizer, scheduler, bf16, the
streaming data module with its random-resized crops) is the recipe's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.streaming_loader import make_jpeg_folder
from kd_lightning.cli import lightning_main
from kd_lightning.data import prepare_dataset

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs" / "imagenet").rglob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_imagenet")
    make_jpeg_folder(root / "train", 40, sizes=(36, 60))
    make_jpeg_folder(root / "val", 20, seed=1, sizes=(36, 60))
    for split in ("train", "val"):
        prepare_dataset(str(root / split), str(root / "prepared"), split=split, verbose=False)
    return root / "prepared"


def test_both_methods_are_shipped():
    assert [p.stem for p in RECIPES] == ["dkd", "kd"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_keeps_the_published_settings(path: Path):
    config = yaml.safe_load(path.read_text())
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert (trainer["devices"], trainer["strategy"], trainer["precision"]) == (8, "ddp", "bf16-mixed")
    assert trainer["max_epochs"] == 100
    assert model["teacher"] == {"name": "resnet34", "pretrained": "IMAGENET1K_V1"}
    assert model["student"] == {"name": "resnet18"}
    assert model["optimizer"]["init_args"] == {"lr": 0.2, "momentum": 0.9, "weight_decay": 0.0001}
    assert model["lr_scheduler"]["init_args"] == {"milestones": [30, 60, 90], "gamma": 0.1}
    assert data["batch_size"] * trainer["devices"] == 512 and data["image_size"] == 224
    assert data["random_resized_crop"] and data["hflip"]
    assert data["drop_remainder"]  # 512 does not divide ImageNet's 1,281,167 training images
    losses = {loss["name"]: loss for loss in model["losses"]}
    if path.stem == "kd":
        assert losses["ce"]["weight"] == losses["kd"]["weight"] == 0.5
        assert losses["kd"]["kwargs"] == {"temperature": 1.0}
    else:
        assert losses["ce"]["weight"] == losses["dkd"]["weight"] == 1.0
        assert losses["dkd"]["kwargs"] == {"alpha": 1.0, "beta": 0.5, "temperature": 1.0, "warmup_epochs": 1}


def _cpu_overrides(data_dir: Path) -> dict[str, str]:
    return {
        "trainer.accelerator": "cpu",
        "trainer.devices": "1",
        "trainer.strategy": "auto",
        "trainer.max_steps": "3",
        "trainer.limit_val_batches": "1",
        "trainer.num_sanity_val_steps": "0",
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "false",
        "model.init_args.teacher.pretrained": "false",  # untrained: no download here
        "data.init_args.data_dir": str(data_dir),
        "data.init_args.image_size": "32",
        "data.init_args.batch_size": "4",
        "data.init_args.eval_batch_size": "4",
        "data.init_args.num_workers": "0",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_instantiates_on_a_synthetic_folder(path, tiny_imagenet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = _cpu_overrides(tiny_imagenet)
    cli = lightning_main(["--config", str(path), *(f"--{k}={v}" for k, v in overrides.items())], run=False)
    assert cli.model.num_classes == 10 and cli.trainer.precision == "bf16-mixed"
    assert cli.datamodule.random_resized_crop and cli.datamodule.batch_size == 4


# ResNet-34 + ResNet-18 steps take half a minute each on the shared 2-core CPU: in the slow run.
@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_trains_a_few_steps_on_a_synthetic_folder(path, tiny_imagenet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = _cpu_overrides(tiny_imagenet)
    cli = lightning_main(["fit", "--config", str(path), *(f"--{k}={v}" for k, v in overrides.items())])
    assert cli.trainer.global_step == 3 and cli.trainer.precision == "bf16-mixed"
    assert cli.model.num_classes == 10 and len(cli.datamodule.val_set) == 20
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert (tmp_path / "runs" / "imagenet" / "resnet34_resnet18" / path.stem / "last.ckpt").is_file()
