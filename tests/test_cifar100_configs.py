"""The CIFAR-100 recipes follow the RepDistiller/mdistiller protocol, read through the CLI parser.

Each recipe is parsed and instantiated by ``kd_lightning.cli`` exactly as ``kd-lightning fit``
would, and the settings are checked on the objects it builds; each one also takes a training step
on random CIFAR-shaped tensors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from kd_lightning.callbacks import LastAndBestAccuracy
from kd_lightning.cli import lightning_main
from kd_lightning.data import CIFAR100DataModule
from kd_lightning.data.batch import Batch
from kd_lightning.losses import CAMKDFeatureLoss, CRDLoss, FitNetLoss
from kd_lightning.losses.wkd import WKDLogitLoss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from kd_lightning.modules.ensemble import TeacherEnsemble
from kd_lightning.optim import DOT

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
CONFIGS = sorted(RECIPES.rglob("*.yaml"))
PAIRS = ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "vgg13_vgg8")
# RepDistiller's and mdistiller's dataset/cifar100.py normalise with exactly these.
REFERENCE_MEAN, REFERENCE_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
# The wide nets (7-9M parameters) take several seconds a step on a shared 2-core CPU: their
# recipes step in the slow run; every method still steps by default on the two smaller pairs.
HEAVY = ("resnet32x4", "vgg13")
# The references' learning rate where it is not RepDistiller's 0.05: the MLKD authors' configs, and the
# ShuffleNet student's 0.01 (RepDistiller, mdistiller and the WKD authors' config for that pair).
REFERENCE_LR = {"mlkd": 0.025}
PAIR_LR = {"wrn_40_2_shufflev1": 0.01}
# WKD-L's (temperature, gamma) in the authors' configs for each pair.
WKD_SETTINGS = {"resnet32x4_resnet8x4": (8.0, 600.0), "wrn_40_2_shufflev1": (6.0, 200.0)}


def _is_heavy(path: Path) -> bool:
    name = str(path.relative_to(RECIPES))
    return any(name.startswith((h, f"teachers/{h}.yaml", f"teachers/{h}_seed")) for h in HEAVY)


def _teacher_specs(path: Path) -> list[dict]:
    """The recipe's teacher specs: none for a teacher recipe, one, or a list of several teachers."""
    teacher = yaml.safe_load(path.read_text())["model"]["init_args"].get("teacher")
    return [] if teacher is None else teacher if isinstance(teacher, list) else [teacher]


def test_every_pair_has_a_teacher_and_the_five_methods() -> None:
    names = {str(p.relative_to(RECIPES)) for p in CONFIGS}
    for pair in PAIRS:
        assert {f"{pair}/{m}.yaml" for m in ("kd", "dkd", "fitnet", "at", "crd")} <= names
    for pair in ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2"):  # the newer logit methods' two pairs
        assert {f"{pair}/{m}.yaml" for m in ("kd_ls", "dkd_ls", "ctkd", "mlkd")} <= names
    assert {f"resnet32x4_resnet8x4/{m}.yaml" for m in ("nkd", "wkd")} <= names
    assert "wrn_40_2_shufflev1/wkd.yaml" in names  # WKD-L's second pair in its paper
    assert {f"resnet32x4x3_vgg8/{m}.yaml" for m in ("camkd", "aekd")} <= names
    assert {"teachers/resnet32x4_seed1.yaml", "teachers/resnet32x4_seed2.yaml"} <= names
    for teacher in ("resnet32x4", "wrn_40_2", "resnet56", "vgg13"):
        assert f"teachers/{teacher}.yaml" in names


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("cifar100_generate", RECIPES / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.main(out=tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(RECIPES) for p in RECIPES.rglob("*") if p.suffix in (".yaml", ".md"))
    assert written == committed  # no recipe the script does not write, none it writes missing
    for relative in written:
        assert (tmp_path / relative).read_text() == (RECIPES / relative).read_text(), f"rerun generate.py: {relative}"


@pytest.fixture(scope="session")
def stand_in_teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Randomly initialised teachers where the recipes expect trained ones, built once per name."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name in ("resnet32x4", "wrn_40_2", "resnet56", "vgg13"):
        paths[name] = folder / f"{name}.pt"
        torch.save(ModelSpec(name).build(100).state_dict(), paths[name])
    return paths


def _instantiate(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, teachers: dict[str, Path]):
    monkeypatch.chdir(tmp_path)
    for teacher in _teacher_specs(path):
        weights = Path(teacher["weights_path"])
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.symlink_to(teachers[teacher["name"]])
    return lightning_main(["--config", str(path)], run=False)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_follows_the_reference_protocol(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_teachers: dict[str, Path]
) -> None:
    cli = _instantiate(path, tmp_path, monkeypatch, stand_in_teachers)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    # All 50,000 training images, validation on the test split, batch 64 on one device.
    assert isinstance(data, CIFAR100DataModule) and data.validate_on_test and data.batch_size == 64
    assert (data.crop_padding, data.hflip) == (4, True)
    # 240 epochs, after the initialisation stage of AB, FSP and FT (RepDistiller's 30 epochs) where there is one.
    init_epochs = max(
        (getattr(loss, "init_epochs", 0) for loss in getattr(model, "loss_terms", {}).values()), default=0
    )
    assert trainer.num_devices == 1 and trainer.max_epochs == 240 + init_epochs
    milestones = model.configure_optimizers()["lr_scheduler"]["scheduler"].milestones
    assert sorted(milestones) == [150 + init_epochs, 180 + init_epochs, 210 + init_epochs]
    # The last and the best epoch are both kept and reported.
    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert len(checkpoints) == 1 and checkpoints[0].save_last is True and checkpoints[0].monitor == "val/acc"
    assert [cb.monitor for cb in trainer.callbacks if isinstance(cb, LastAndBestAccuracy)] == ["val/acc"]
    # The references' schedule and input statistics.
    optimizer = model.configure_optimizers()["optimizer"]
    # DOT recipes: SGD whose momentum is 0.9 -+ 0.075 on the CE and KD gradients (mdistiller's configs/cifar100/dot/).
    assert isinstance(optimizer, DOT if path.stem.endswith("_dot") else torch.optim.SGD)
    assert optimizer.defaults.get("delta", 0.075) == 0.075
    assert (optimizer.defaults["lr"], optimizer.defaults["momentum"], optimizer.defaults["weight_decay"]) == (
        REFERENCE_LR.get(path.stem, PAIR_LR.get(path.parent.name, 0.05)),
        0.9,
        5e-4,
    )
    # CA-MKD's run.sh passes --nesterov to every multi-teacher run; DOT has none.
    assert optimizer.defaults.get("nesterov", False) == (path.parent.name == "resnet32x4x3_vgg8")
    networks = [model.network]
    if isinstance(model, DistillationModule):
        teachers = model.teacher.members() if isinstance(model.teacher, TeacherEnsemble) else [model.teacher]
        networks += [teacher.network for teacher in teachers]
    for network in networks:
        assert network.input_config.mean == REFERENCE_MEAN and network.input_config.std == REFERENCE_STD
    if not _is_heavy(path):
        _training_step(model, data)  # the heavy ones step in the slow run
    if isinstance(model, FrozenBackboneFinetuner):
        assert checkpoints[0].dirpath.endswith(f"runs/cifar100/{path.stem}")
        return
    # Students distil from the teacher's last epoch, the file its teacher recipe writes.
    specs = _teacher_specs(path)
    if path.parent.name == "resnet32x4x3_vgg8":  # three teachers of one architecture, trained with seeds 0, 1 and 2
        assert isinstance(model.teacher, TeacherEnsemble) and model.teacher.ensemble == path.stem
        if path.stem == "aekd":  # run.sh's AEKD: -C 0.6, libsvm's tolerance as find_optimal_svm sets it
            assert (model.teacher_options.aekd_max_weight, model.teacher_options.aekd_tolerance) == (0.6, 1e-6)
        feature = [loss for loss in model.loss_terms.values() if isinstance(loss, CAMKDFeatureLoss)]
        if path.stem == "camkd":  # run.sh's --distill inter -b 50: vgg8's last map onto each teacher's, from epoch 2
            assert model.loss_weights["camkd_feature"] == 50.0 and feature[0].start_epoch == 1
            assert (feature[0].student_layers, feature[0].teacher_layers) == (("block4",), ("layer3",))
            assert [embed[0].out_channels for embed in feature[0].embeds] == [256] * 3
        else:
            assert not feature
        assert [spec["weights_path"] for spec in specs] == [
            f"runs/cifar100/resnet32x4{suffix}/last.ckpt" for suffix in ("", "_seed1", "_seed2")
        ]
    else:
        assert [spec["weights_path"] for spec in specs] == [f"runs/cifar100/{specs[0]['name']}/last.ckpt"]
    for loss in model.loss_terms.values():
        if isinstance(loss, FitNetLoss):
            assert loss.final_relu and loss.hint_epochs == 0  # RepDistiller: ConvReg ends in a ReLU, one stage
            assert all(isinstance(regressor[-1], nn.ReLU) for regressor in loss.regressors)
        if path.stem.endswith("_ls"):
            assert loss.standardize  # LS-KD's --logit-stand
        if isinstance(loss, WKDLogitLoss):  # full weight to epoch 150, then a half cosine to 0 at 240
            temperature, gamma = WKD_SETTINGS[path.parent.name]
            assert loss.cost.shape == (100, 100) and loss.temperature == temperature and loss.sharpen == 1.0
            assert loss.gamma_at(149) == gamma and loss.gamma_at(194) == pytest.approx(gamma / 2)
            assert loss.gamma_at(239) == pytest.approx(0.0)
        if isinstance(loss, CRDLoss):
            assert loss.negative_sampling == "other_classes" and loss.num_negatives == 16384
            assert loss.configured_num_samples is None  # sized by the training set, never typed in
            assert data.return_indices


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if _is_heavy(p)], ids=lambda p: str(p.relative_to(RECIPES)))
def test_heavy_recipe_takes_a_training_step(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_teachers: dict[str, Path]
) -> None:
    cli = _instantiate(path, tmp_path, monkeypatch, stand_in_teachers)
    _training_step(cli.model, cli.datamodule)


def _training_step(model, data) -> None:
    assert model.num_classes == 100
    model.log = lambda *args, **kwargs: None
    model.log_dict = lambda *args, **kwargs: None
    optimizer = model.configure_optimizers()["optimizer"]
    images, labels, indices = torch.rand(4, 3, 32, 32), torch.randint(0, 100, (4,)), None
    if data.return_indices:
        # What the fit's setup passes in: the labels of the 50,000 training images.
        train_labels = torch.arange(50_000) % 100
        for loss in model.loss_terms.values():
            loss.bind_training_labels(train_labels)
        indices = torch.tensor([0, 1, 2, 49_999])
        labels = train_labels[indices]
    batch = Batch(labels, images=images, indices=indices)
    model.train()
    loss = model.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    if isinstance(model, DistillationModule):
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert {id(p) for p in model.loss_terms.parameters()} <= in_optimizer
