"""``benchmarks/cifar100_short.py``: a recipe on a short schedule, and its --smoke path on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import cifar100_short
from kd_lightning.cli import lightning_main
from kd_lightning.models import ModelSpec


def test_milestones_keep_their_fractions_of_the_schedule() -> None:
    assert cifar100_short.scaled_milestones([150, 180, 210], 240) == [150, 180, 210]
    assert cifar100_short.scaled_milestones([150, 180, 210], 24) == [15, 18, 21]
    assert cifar100_short.scaled_milestones([150, 180, 210], 10) == [6, 8, 9]


def test_a_staged_recipe_scales_its_initialisation_stage_and_counts_milestones_after_it() -> None:
    recipe = yaml.safe_load(cifar100_short.recipe_path("resnet32x4_resnet8x4/ab").read_text())
    assert recipe["trainer"]["max_epochs"] == 270  # 30 initialisation epochs, then the 240 of the protocol
    full = cifar100_short.scheduled(recipe, 240, "runs/cifar100", smoke=False)
    assert full["trainer"] == recipe["trainer"] and full["model"] == recipe["model"]
    short = cifar100_short.scheduled(recipe, 24, "runs/cifar100_e24", smoke=False)
    (stage,) = [t["kwargs"] for t in short["model"]["init_args"]["losses"] if "init_epochs" in t.get("kwargs", {})]
    assert stage["init_epochs"] == 3 and short["trainer"]["max_epochs"] == 27
    assert short["model"]["init_args"]["lr_scheduler"]["init_args"]["milestones"] == [18, 21, 24]


def test_short_schedule_changes_only_the_schedule_and_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = yaml.safe_load(cifar100_short.recipe_path("resnet56_resnet20/kd").read_text())
    short = cifar100_short.scheduled(recipe, 10, "runs/cifar100_e10", smoke=False)
    assert short["model"]["init_args"]["teacher"]["weights_path"] == "runs/cifar100_e10/resnet56/last.ckpt"
    assert short["model"]["init_args"]["losses"] == recipe["model"]["init_args"]["losses"]
    assert short["data"] == recipe["data"]
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(short))
    teacher = Path(short["model"]["init_args"]["teacher"]["weights_path"])
    teacher.parent.mkdir(parents=True)
    torch.save(ModelSpec("resnet56").build(100).state_dict(), teacher)  # a stand-in for the short teacher
    cli = lightning_main(["--config", str(path)], run=False)
    assert cli.trainer.max_epochs == 10 and cli.trainer.num_devices == 1 and cli.datamodule.validate_on_test
    scheduler = cli.model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert sorted(scheduler.milestones.elements()) == [6, 8, 9]
    assert cli.trainer.default_root_dir.endswith("runs/cifar100_e10/resnet56_resnet20/kd")


def test_several_teachers_each_move_with_the_schedule_and_name_their_teacher_recipe() -> None:
    recipe = yaml.safe_load(cifar100_short.recipe_path("resnet32x4x3_vgg8/camkd").read_text())
    short = cifar100_short.scheduled(recipe, 10, "runs/cifar100_e10", smoke=False)
    paths = [spec["weights_path"] for spec in cifar100_short.teacher_specs(short["model"]["init_args"])]
    runs = ["resnet32x4", "resnet32x4_seed1", "resnet32x4_seed2"]
    assert paths == [f"runs/cifar100_e10/{run}/last.ckpt" for run in runs]
    assert [cifar100_short.teacher_recipe(path) for path in paths] == [f"teachers/{run}" for run in runs]
    for run in runs:  # each names a teacher recipe that writes exactly that file
        teacher = yaml.safe_load(cifar100_short.recipe_path(f"teachers/{run}").read_text())
        assert teacher["trainer"]["callbacks"][0]["init_args"]["dirpath"] == f"runs/cifar100/{run}"


def test_full_schedule_writes_where_the_recipes_do() -> None:
    recipe = yaml.safe_load(cifar100_short.recipe_path("wrn_40_2_wrn_16_2/crd").read_text())
    assert cifar100_short.scheduled(recipe, 240, "runs/cifar100", smoke=False) == recipe


def test_an_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(SystemExit, match="resnet56_resnet20/kd"):
        cifar100_short.recipe_path("resnet56_resnet20/kdd")


@pytest.mark.slow
def test_smoke_trains_teacher_then_student_and_prints_the_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cifar100_short.main(["resnet56_resnet20/crd", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "teachers/resnet56: test-split accuracy per epoch" in out
    assert "resnet56_resnet20/crd: val/acc_last" in out
    curve = json.loads((tmp_path / "runs/cifar100_e2/resnet56_resnet20/crd/curve.json").read_text())
    assert sorted(curve["curve"]) == ["0", "1"] and curve["val/acc_last"] == curve["curve"]["1"]
    assert (tmp_path / "runs/cifar100_e2/resnet56/last.ckpt").is_file()
    # The student's CRD memory took the (random) training set's size.
    student = torch.load(tmp_path / "runs/cifar100_e2/resnet56_resnet20/crd/last.ckpt", weights_only=True)
    memory = student["state_dict"]["loss_terms.crd.student_memory"]
    assert len(memory) == cifar100_short.RandomCIFAR100.sizes["train"]
