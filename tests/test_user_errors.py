"""Bad input ends in one ``error: ...`` line naming the problem and the fix, exit status 2, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kd_lightning.cli import find_user_error, main
from kd_lightning.errors import ConfigError, KDLightningError
from kd_lightning.losses import create_loss
from kd_lightning.models import create_model

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: dict, data: dict | None = None) -> Path:
    config = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
        },
        "model": model,
        "data": data or {"class_path": "kd_lightning.data.DigitsDataModule"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _distill(teacher: dict, **init_args) -> dict:
    student = {"name": "small_cnn", "kwargs": {"width": 4}}
    return {
        "class_path": "kd_lightning.modules.DistillationModule",
        "init_args": {"student": student, "teacher": teacher, **init_args},
    }


def _scratch() -> dict:
    network = {"name": "small_cnn", "kwargs": {"width": 4}}
    return {"class_path": "kd_lightning.modules.FrozenBackboneFinetuner", "init_args": {"network": network}}


def _user_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def teacher_file(tmp_path) -> Path:
    path = tmp_path / "teacher.pt"
    torch.save(create_model("small_cnn", 10, width=8).state_dict(), path)
    return path


def _teacher(path: Path, width: int = 8) -> dict:
    return {"name": "small_cnn", "kwargs": {"width": width}, "weights_path": str(path)}


@pytest.mark.parametrize(
    ("init_args", "expected"),
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"temperature": -2.0}, "temperature must be > 0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ],
)
def test_out_of_range_hyperparameters(tmp_path, capsys, teacher_file, init_args, expected):
    config = _config(tmp_path, _distill(_teacher(teacher_file), **init_args))
    line = _user_error(capsys, ["fit", "--config", str(config)])
    assert re.search(expected, line), line


def test_unknown_backbone_suggests_close_names(tmp_path, capsys, teacher_file):
    config = _config(tmp_path, _distill({"name": "resnet9"}))
    line = _user_error(capsys, ["fit", "--config", str(config)])
    assert "unknown backbone 'resnet9'" in line and "resnet8" in line


def test_unknown_loss_suggests_close_names():
    with pytest.raises(ConfigError, match="unknown distillation loss 'kdd'. Did you mean: kd"):
        create_loss("kdd")


def test_teacher_with_another_class_count(tmp_path, capsys):
    path = tmp_path / "teacher5.pt"
    torch.save(create_model("small_cnn", 5, width=8).state_dict(), path)
    line = _user_error(capsys, ["fit", "--config", str(_config(tmp_path, _distill(_teacher(path))))])
    assert "trained for 5 classes but this model has 10" in line


def test_teacher_checkpoint_of_another_architecture(tmp_path, capsys, teacher_file):
    config = _config(tmp_path, _distill(_teacher(teacher_file, width=16)))
    line = _user_error(capsys, ["fit", "--config", str(config)])
    assert "does not match" in line and "with another shape" in line and "another architecture" in line


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt"])
def test_bad_teacher_file(tmp_path, capsys, teacher_file, damage):
    if damage == "missing":
        teacher_file.unlink()
        expected = "weights file not found"
    else:
        data = teacher_file.read_bytes()
        teacher_file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 10)
        expected = "truncated, corrupt"
    line = _user_error(capsys, ["fit", "--config", str(_config(tmp_path, _distill(_teacher(teacher_file))))])
    assert expected in line and str(teacher_file) in line


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_bad_resume_checkpoint(tmp_path, capsys, damage):
    ckpt = tmp_path / "last.ckpt"
    if damage == "corrupt":
        ckpt.write_bytes(b"PK\x03\x04 half a zip")
    line = _user_error(capsys, ["fit", "--config", str(_config(tmp_path, _scratch())), "--ckpt_path", str(ckpt)])
    assert ("checkpoint not found" if damage == "missing" else "truncated, corrupt") in line


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_data_dir(tmp_path, capsys, state):
    data_dir = tmp_path / "mnist"
    if state == "empty":
        data_dir.mkdir()
    data = {"class_path": "kd_lightning.data.MNISTDataModule", "init_args": {"data_dir": str(data_dir)}}
    line = _user_error(capsys, ["fit", "--config", str(_config(tmp_path, _scratch(), data))])
    assert "MNIST not found under" in line and "data.download: true" in line


def test_a_bug_is_not_a_user_error():
    try:
        try:
            raise ConfigError("the cause")
        except ConfigError as cause:
            raise ValueError("wrapped by jsonargparse") from cause
    except ValueError as err:
        assert str(find_user_error(err)) == "the cause"
    assert find_user_error(RuntimeError("a bug")) is None
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, KDLightningError)


def test_command_line_exit_status_and_traceback_switch(tmp_path, teacher_file):
    config = _config(tmp_path, _distill(_teacher(teacher_file), alpha=2.0))
    command = [sys.executable, "-m", "kd_lightning", "fit", "--config", str(config)]
    short = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert short.returncode == 2
    assert "error: alpha must be in [0, 1]" in short.stderr and "Traceback" not in short.stderr
    full = subprocess.run([*command, "--traceback"], capture_output=True, text=True, cwd=REPO)
    assert full.returncode == 1 and "Traceback" in full.stderr and "ConfigError" in full.stderr


def test_resume_with_another_data_config(tmp_path, capsys):
    """LightningCLI takes the model's hyper-parameters from the checkpoint; the data config is checked."""
    config = _config(tmp_path, _scratch())
    main(["fit", "--config", str(config), "--trainer.enable_checkpointing", "true"])
    (ckpt,) = tmp_path.rglob("*.ckpt")
    args = ["fit", "--config", str(config), "--data.init_args.batch_size", "16", "--ckpt_path", str(ckpt)]
    line = _user_error(capsys, args)
    assert "another config: data.batch_size: checkpoint 64, config 16" in line


def test_feature_layer_that_does_not_exist_lists_the_available_ones(tmp_path, capsys, teacher_file):
    losses = [{"name": "ce"}, {"name": "at", "kwargs": {"student_layers": ["layer9"], "teacher_layers": ["layer9"]}}]
    model = _distill(_teacher(teacher_file), losses=losses, input_shape=[1, 8, 8])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(_config(tmp_path, model))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: no layer named ['layer9']" in err
    assert "input_adapter: (1, 8, 8)" in err and "7: (8, 4, 4)" in err, err


def _image_folder(root: Path, corrupt: bool = False, empty_class: bool = False) -> Path:
    from torchvision.io import write_png

    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        if empty_class and label == "dog":
            continue
        for i in range(3):
            write_png(torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8), str(root / label / f"{i}.png"))
    if corrupt:
        (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.mark.parametrize(("problem", "expected"), [("corrupt", "broken.png"), ("empty_class", "dog")])
def test_image_folder_with_a_bad_image_or_an_empty_class(tmp_path, capsys, problem, expected):
    root = _image_folder(tmp_path / "images", corrupt=problem == "corrupt", empty_class=problem == "empty_class")
    data = {"class_path": "kd_lightning.data.ImageFolderDataModule", "init_args": {"data_dir": str(root)}}
    line = _user_error(capsys, ["fit", "--config", str(_config(tmp_path, _scratch(), data))])
    assert expected in line, line
