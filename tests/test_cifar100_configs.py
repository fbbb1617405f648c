"""Every CIFAR-100 recipe parses, instantiates and takes one training step on random CIFAR-shaped tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kd_lightning.cli import lightning_main
from kd_lightning.data.batch import Batch
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
CONFIGS = sorted(RECIPES.rglob("*.yaml"))
PAIRS = ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "vgg13_vgg8")
# The wide nets (7-9M parameters) take several seconds a step on a shared 2-core CPU: their
# recipes step in the slow run; every method still steps by default on the two smaller pairs.
HEAVY = ("resnet32x4", "vgg13")


def _case(path: Path):
    name = str(path.relative_to(RECIPES))
    marks = [pytest.mark.slow] if any(name.startswith(h) or name == f"teachers/{h}.yaml" for h in HEAVY) else []
    return pytest.param(path, id=name, marks=marks)


def test_every_pair_has_a_teacher_and_the_five_methods() -> None:
    names = {str(p.relative_to(RECIPES)) for p in CONFIGS}
    for pair in PAIRS:
        assert {f"{pair}/{m}.yaml" for m in ("kd", "dkd", "fitnet", "at", "crd")} <= names
    for teacher in ("resnet32x4", "wrn_40_2", "resnet56", "vgg13"):
        assert f"teachers/{teacher}.yaml" in names


def _stand_in_teacher(config: dict) -> None:
    """A randomly initialised teacher where the recipe expects the trained one (no training in tests)."""
    teacher = config["model"]["init_args"].get("teacher")
    if teacher:
        path = Path(teacher["weights_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ModelSpec(teacher["name"]).build(100).state_dict(), path)


@pytest.mark.parametrize("path", [_case(p) for p in CONFIGS])
def test_recipe_takes_a_training_step(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load(path.read_text())
    _stand_in_teacher(config)
    cli = lightning_main(["--config", str(path)], run=False)
    model, data = cli.model, cli.datamodule
    assert cli.trainer.max_epochs == 240 and data.batch_size == 64
    assert model.num_classes == 100
    model.log = lambda *args, **kwargs: None
    model.log_dict = lambda *args, **kwargs: None
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.defaults["lr"] == 0.05 and optimizer.defaults["weight_decay"] == 5e-4
    indices = torch.tensor([0, 1, 2, 44_999]) if data.return_indices else None
    batch = Batch(torch.randint(0, 100, (4,)), images=torch.rand(4, 3, 32, 32), indices=indices)
    model.train()
    loss = model.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    if isinstance(model, DistillationModule):
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert {id(p) for p in model.loss_terms.parameters()} <= in_optimizer
