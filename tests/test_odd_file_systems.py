"""Odd trees and file systems: links that loop, names that are not UTF-8 or too long, paths through
files. Each is one ``error:`` line (exit 2, no traceback) that writes nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests._bad_input_helpers import snapshot, user_error_line


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png"
            )
    return tmp_path / "images"


def _fit_config(tmp_path: Path, train_dir: Path, run: Path | None = None) -> Path:
    run = run or tmp_path / "run"
    checkpoint = {"dirpath": str(run), "filename": "best", "monitor": "val/acc", "mode": "max"}
    config = {
        "trainer": {
            "max_epochs": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(run),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}],
        },
        "model": {
            "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
            "init_args": {"network": {"name": "small_cnn", "kwargs": {"width": 4, "in_chans": 3}}},
        },
        "data": {
            "class_path": "kd_lightning.data.ImageFolderDataModule",
            "init_args": {"train_dir": str(train_dir), "image_size": 8, "batch_size": 4, "val_fraction": 0.25},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TREES: dict[str, tuple[Callable[[Path], None], str]] = {
    "loop_to_itself": (lambda root: (root / "loop").symlink_to(".", target_is_directory=True), "loop is a link to"),
    "link_above": (lambda root: (root / "up").symlink_to("..", target_is_directory=True), "up is a link to"),
    "link_to_a_class": (lambda root: (root / "c").symlink_to("a", target_is_directory=True), "c is a link to"),
    "not_utf8": (
        lambda root: (root / "b").rename(root / os.fsdecode(b"caf\xe9")),
        "class folder b'",
    ),
}


@pytest.mark.parametrize("tree", list(TREES), ids=list(TREES))
@pytest.mark.parametrize("command", ["prepare", "fit"])
def test_an_odd_class_folder_is_one_line(images, tmp_path, capsys, tree, command):
    change, expected = TREES[tree]
    change(images)
    if command == "prepare":
        argv = ["prepare", str(images), str(tmp_path / "out"), "--verbose", "false"]
    else:
        argv = ["fit", "--config", str(_fit_config(tmp_path, images))]
    before = snapshot(tmp_path)
    line = user_error_line(capsys, argv)
    assert expected in line
    assert "remove the link" in line or "rename it" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_link_to_a_folder_outside_is_a_class(images, tmp_path):
    """Links are how large data sets are often laid out: only those that loop back are refused."""
    from kd_lightning.data.image_folder import list_class_folders

    (tmp_path / "elsewhere").mkdir()
    (images / "c").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (images / "a" / "again").symlink_to("..", target_is_directory=True)  # inside a class: never walked
    assert list_class_folders(images) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (lambda tmp: tmp / ("r" * 240), "is too long for its file system once the lock file"),
        (lambda tmp: tmp / "file", "is, or runs through, a file"),
        (lambda tmp: tmp / "file" / "run", "is, or runs through, a file"),
    ],
    ids=["240_character_run_name", "run_folder_is_a_file", "run_folder_below_a_file"],
)
def test_a_run_folder_the_file_system_cannot_hold_is_one_line(images, tmp_path, capsys, run, expected):
    (tmp_path / "file").write_text("a file")
    before = snapshot(tmp_path)
    line = user_error_line(capsys, ["fit", "--config", str(_fit_config(tmp_path, images, run(tmp_path)))])
    assert expected in line
    after = snapshot(tmp_path)
    after.pop("config.yaml")
    assert after == before
