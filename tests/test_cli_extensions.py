"""The user's own loss, backbone and callback, defined outside the package, run from a YAML config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from kd_lightning.cli import main

USER_MODULE = '''
"""A user's extensions, outside kd_lightning."""
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from kd_lightning.losses import DistillationLoss, register_loss
from kd_lightning.models import NetworkParts, InputConfig, register_backbone

CALLS = {"loss": 0, "backbone": 0, "callback": 0}


@register_loss("user_logit_mse")
class LogitMSE(DistillationLoss):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, student, teacher, context):
        CALLS["loss"] += 1
        return self.scale * F.mse_loss(student.logits, teacher.logits)


@register_backbone("user_tiny_net", input_config=InputConfig(in_chans=1))
def user_tiny_net(pretrained=False, in_chans=1, width=3):
    CALLS["backbone"] += 1
    backbone = nn.Sequential(nn.Conv2d(in_chans, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return NetworkParts(backbone, width)


class CountSteps(Callback):
    def on_train_batch_end(self, *args):
        CALLS["callback"] += 1
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user_code")
    path = folder / "kd_user_extensions.py"
    path.write_text(USER_MODULE)
    return path


def _config(tmp_path: Path, imports: list[str] | None) -> Path:
    student = {"name": "user_tiny_net", "kwargs": {"width": 3}}
    teacher = {"name": "small_cnn", "kwargs": {"width": 4}}
    losses = [{"name": "ce", "weight": 0.5}, {"name": "user_logit_mse", "weight": 0.5, "kwargs": {"scale": 2.0}}]
    config = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [{"class_path": "kd_user_extensions.CountSteps"}],
        },
        "model": {
            "class_path": "kd_lightning.modules.DistillationModule",
            "init_args": {
                "student": student,
                "teacher": teacher,
                "losses": losses,
            },
        },
        "data": {"class_path": "kd_lightning.data.DigitsDataModule"},
    }
    if imports is not None:
        config["imports"] = imports
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("how", ["config_key_with_a_file_path", "flag_with_a_module_name"])
def test_user_loss_backbone_and_callback_run_through_fit(user_module, tmp_path, monkeypatch, how):
    if how == "config_key_with_a_file_path":
        args = ["fit", "--config", str(_config(tmp_path, [str(user_module)]))]
    else:
        monkeypatch.chdir(user_module.parent)  # a module name is found from the working directory
        args = ["fit", "--imports", "kd_user_extensions", "--config", str(_config(tmp_path, None))]
    calls_before = dict(sys.modules["kd_user_extensions"].CALLS) if "kd_user_extensions" in sys.modules else None
    main(args)
    calls = sys.modules["kd_user_extensions"].CALLS
    before = calls_before or {"loss": 0, "backbone": 0, "callback": 0}
    assert calls["backbone"] > before["backbone"]  # the student was built by the user's builder
    assert calls["loss"] > before["loss"]  # the user's loss took part in the training steps
    assert calls["callback"] - before["callback"] == 2  # class_path reached the user's class: one call per step


def test_imports_run_before_report_and_export_too(user_module, tmp_path, capsys):
    """Typed commands accept --imports (a checkpoint of a user backbone needs its builder)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "missing.ckpt"), "--imports", str(user_module)])
    assert exit_info.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert "kd_user_extensions" in sys.modules
