import json
from pathlib import Path

import pytest
import torch
import yaml

from kd_lightning.cli import WANDB_LOGGER, expand_wandb_flag, lightning_main
from kd_lightning.models import ModelSpec
from kd_lightning.modules import FrozenBackboneFinetuner
from tests._wandb_helpers import offline_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_wandb_flag_is_the_shipped_config_fragment():
    fragment = yaml.safe_load((CONFIGS / "logger" / "wandb.yaml").read_text())
    assert fragment == {"trainer": {"logger": WANDB_LOGGER}}
    assert expand_wandb_flag(["fit", "--wandb", "--x=1"])[1].startswith("--trainer.logger=")


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield tmp_path
    import wandb

    wandb.finish()


def test_offline_distillation_run_has_full_config_and_metrics(offline_wandb):
    teacher = FrozenBackboneFinetuner(ModelSpec("small_cnn", kwargs={"width": 8}), num_classes=10, strategy="full")
    torch.save({"state_dict": teacher.state_dict()}, offline_wandb / "teacher.ckpt")
    lightning_main(
        [
            "fit",
            f"--config={CONFIGS / 'digits' / 'distill.yaml'}",
            "--model.init_args.teacher.kwargs.width=8",
            f"--model.init_args.teacher.weights_path={offline_wandb / 'teacher.ckpt'}",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=2",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--wandb",
            f"--trainer.logger.init_args.save_dir={offline_wandb}",
        ]
    )
    import wandb

    wandb.finish()
    config, history = offline_run(offline_wandb)
    # The whole resolved CLI config, not only the module's hyper-parameters.
    assert config["trainer"]["max_epochs"] == 1
    assert config["model"]["class_path"] == "kd_lightning.modules.DistillationModule"
    assert config["model"]["init_args"]["temperature"] == 4.0
    assert config["data"]["class_path"] == "kd_lightning.data.DigitsDataModule"
    assert config["seed_everything"] == 0
    keys = set().union(*history)
    expected = {
        "train/loss",
        "train/ce",
        "train/kd",
        "train/acc",
        *(f"val/{m}" for m in ("loss", "acc", "acc_top5", "f1_macro", "ece", "teacher_acc", "agreement", "kl")),
        "val/confusion_matrix_table/_type",  # the data behind the W&B confusion-matrix plot
        "val/per_class/_type",
    }
    assert expected <= keys, expected - keys
    values = {k: v for row in history for k, v in row.items()}
    assert 0.0 <= values["val/ece"] <= 1.0
    assert values["val/kl"] >= 0.0
    (table,) = offline_wandb.glob("wandb/offline-run-*/files/media/table/val/per_class_*.table.json")
    assert json.loads(table.read_text())["columns"] == [
        "class",
        "support",
        "student_acc",
        "teacher_acc",
        "student_minus_teacher",
    ]
