"""Every shipped config takes a training step through the CLI with its own logger, as users run it.

Tests that turn the logger off (``logger: false``) cannot see what only a logger does: merging the
module's and the data's hyper-parameters, writing ``hparams.yaml``, naming version folders. Here
each config keeps its logger (Lightning's default where it names none) and runs one step with
stand-in data: CIFAR-100 as a synthetic ``cifar-100-python`` folder, Fashion-MNIST as synthetic IDX
files (never the system copy: a fresh machine has none), ImageNet as the synthetic JPEG folder of
tests/test_imagenet_configs.py prepared into LitData chunks.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kd_lightning.cli import lightning_main
from kd_lightning.data import FashionMNISTDataModule
from tests._extras import require_extra
from tests.test_configs import ALL_CONFIGS, BASE_CONFIG, CONFIGS, _write_stand_in_weights
from tests.test_data_sets import write_mnist
from tests.test_imagenet_configs import RECIPES, _cpu_overrides, tiny_imagenet  # noqa: F401  (a fixture)

# One step, one validation batch, no sanity check: what differs from the config is the amount of work only.
ONE_STEP = [
    "--trainer.max_steps=1",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=1",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
]
# The wide CIFAR nets and the ImageNet pair take several seconds a step on a shared CPU; most Fashion-MNIST
# configs step an ImageNet EfficientNet-Lite0 or a WRN teacher (2-25 s each).
HEAVY = ("resnet32x4", "vgg13", "wrn_40_2", "resnet56", "imagenet", "fashion_mnist")


def _cifar100(root: Path) -> Path:
    """A ``cifar-100-python`` folder of 200 training and 100 test images over the 100 classes."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", 200), ("test", 100)):
        batch = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "fine_labels": [int(i) for i in np.arange(count) % 100],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}, protocol=2))
    return root


def _fashion_mnist(root: Path) -> None:
    """Fashion-MNIST's four IDX files where torchvision downloads them: 600 training images per class (the
    largest label budget a config asks for is 500 per class, with an unlabeled rest) and 20 test images per class."""
    write_mnist(root / "FashionMNIST" / "raw", n_train=6000, n_test=200)


def _logged_runs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name in ("hparams.yaml", "metrics.csv") or "events.out" in p.name)


def _is_heavy(name: str) -> bool:
    # W&B offline starts its own service process: slow to start on a shared CPU.
    return any(part in name for part in HEAVY) or name.startswith("logger/wandb")


# Full-label students of three sizes differ in width only: the smallest of each kind logs for all three.
SIZE_VARIANTS = (
    "fashion_mnist/full_labels/scratch_50k",
    "fashion_mnist/full_labels/scratch_500k",
    "fashion_mnist/full_labels/distill_50k",
    "fashion_mnist/full_labels/distill_500k",
)


def _logs_something_new(name: str) -> bool:
    """Every config but variants whose logging path another config already takes: the CIFAR-100 method recipes
    past each pair's ``kd.yaml`` (they differ in their loss only, and tests/test_cifar100_configs.py steps each
    of them) and the full-label students' larger sizes."""
    parts = name.split("/")
    if parts[0] == "cifar100" and len(parts) == 3 and parts[1] != "teachers" and parts[2] != "kd.yaml":
        return False
    return name.removesuffix(".yaml") not in SIZE_VARIANTS


CASES = [name for name in (str(p.relative_to(CONFIGS)) for p in ALL_CONFIGS) if _logs_something_new(name)]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if _is_heavy(n) else n for n in CASES])
def test_config_takes_a_logged_step(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = CONFIGS / name
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    text = path.read_text()
    if "efficientnet_lite0" in text:
        require_extra("efficientnet-lite0")
    if "WandbLogger" in text:
        pytest.importorskip("wandb")
    config = yaml.safe_load(text)
    args = ["fit", "--config", str(path)]
    if "model" not in config:  # a fragment (a logger, a scaling strategy) on top of a full config
        args = ["fit", "--config", str(BASE_CONFIG), "--config", str(path)]
        config = {**yaml.safe_load(BASE_CONFIG.read_text()), **config}
    assert (config.get("trainer") or {}).get("logger") is not False, "a shipped config runs with a logger"
    if "CIFAR100" in config["data"]["class_path"]:
        _cifar100(tmp_path / "data")
        args += ["--data.init_args.download=false"]
    if "FashionMNIST" in config["data"]["class_path"]:
        monkeypatch.setattr(FashionMNISTDataModule, "system_dirs", ())
        _fashion_mnist(tmp_path / "data")
    if (config.get("trainer") or {}).get("strategy") == "ddp":
        args += ["--trainer.devices=1", "--trainer.strategy=auto"]
    if "fashion_mnist" in name and "teacher_cache" in config["model"].get("init_args", {}):
        # The cache would run the teacher over all 60,000 training images before the one step (tens of
        # minutes on a CPU); its logging is the same as the live teacher's, which steps here.
        args += ["--model.init_args.teacher_cache=null"]
    _write_stand_in_weights(config)
    cli = lightning_main([*args, *ONE_STEP])
    assert cli.trainer.global_step == 1
    assert cli.trainer.loggers, "the run had no logger"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    if not any(type(logger).__name__ == "WandbLogger" for logger in cli.trainer.loggers):
        assert _logged_runs(tmp_path), "the logger wrote nothing"


@pytest.mark.slow  # ResNet-34 + ResNet-18 steps on a shared CPU
@pytest.mark.parametrize(
    "path",
    RECIPES,
    ids=lambda p: p.stem,
)
def test_imagenet_recipe_takes_a_logged_step(path, tiny_imagenet, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    overrides = {k: v for k, v in _cpu_overrides(tiny_imagenet).items() if k != "trainer.logger"}
    overrides["trainer.max_steps"] = "1"
    cli = lightning_main(["fit", "--config", str(path), *(f"--{k}={v}" for k, v in overrides.items())])
    assert cli.trainer.global_step == 1 and cli.trainer.loggers
    assert _logged_runs(tmp_path)
