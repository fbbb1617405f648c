"""Damaged or cut-short LitData chunks and indexes: one ``error:`` line naming the file, never a
crash in libpng (SIGSEGV) or a wait for the rest of the file until a timeout."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.io import encode_png

from kd_lightning.data.integrity import check_encoded_image
from kd_lightning.data.prepare import prepare_dataset
from tests._bad_input_helpers import user_error_line

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Two classes of 16x16 noise images (PNGs: stored re-encoded), prepared as train and val."""
    root = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / "images" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / name / f"{i}.png")
    for split in ("train", "val"):
        prepare_dataset(str(root / "images"), str(root / "prepared"), split=split, verbose=False)
    return root / "prepared"


def _copy(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "prepared"
    for path in prepared.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(prepared)).parent.mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(prepared)).write_bytes(path.read_bytes())
    return copy


def _config(data_dir: Path, tmp_path: Path, num_workers: int = 0) -> Path:
    config = {
        "trainer": {"logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run")},
        "model": {
            "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
            "init_args": {"network": {"name": "resnet8", "kwargs": {}}, "strategy": "full"},
        },
        "data": {
            "class_path": "kd_lightning.data.StreamingImageDataModule",
            "init_args": {"data_dir": str(data_dir), "batch_size": 4, "num_workers": num_workers},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def zero_bytes(path: Path, every: int = 700, length: int = 64) -> None:
    """Zero ``length`` bytes every ``every`` bytes: what a bad sector or a failed copy leaves."""
    data = bytearray(path.read_bytes())
    for offset in range(every // 2, len(data), every):
        data[offset : offset + length] = bytes(min(length, len(data) - offset))
    path.write_bytes(bytes(data))


DAMAGE = {
    "zeroed_chunk": (
        lambda split: zero_bytes(split / "chunk-0-0.bin"),
        "chunk-0-0.bin: a stored sample cannot be read",
    ),
    "truncated_chunk": (
        lambda split: (split / "chunk-0-0.bin").write_bytes((split / "chunk-0-0.bin").read_bytes()[:3000]),
        "chunk-0-0.bin is 3,000 bytes of the",
    ),
    "missing_chunk": (lambda split: (split / "chunk-0-0.bin").unlink(), "chunk-0-0.bin is missing"),
    "truncated_index": (
        lambda split: (split / "index.json").write_bytes((split / "index.json").read_bytes()[:40]),
        "index.json is missing, damaged or cut short",
    ),
    "foreign_index": (lambda split: (split / "index.json").write_text("[1, 2]"), "index.json is missing, damaged"),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_split_is_one_line_naming_the_file(prepared, tmp_path, capsys, case):
    data_dir = _copy(prepared, tmp_path)
    damage, expected = DAMAGE[case]
    damage(data_dir / "val")
    line = user_error_line(capsys, ["validate", "--config", str(_config(data_dir, tmp_path))])
    assert expected in line and str(data_dir / "val") in line
    assert line.endswith("prepare the split again (kd-lightning prepare ... --overwrite true)")


@pytest.mark.slow  # a validate in a child process with two loader workers
def test_a_zeroed_chunk_read_by_loader_workers_is_one_line_not_a_crash(prepared, tmp_path):
    data_dir = _copy(prepared, tmp_path)
    zero_bytes(data_dir / "val" / "chunk-0-0.bin")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "kd_lightning.cli", "validate", "--config", str(_config(data_dir, tmp_path, 2))]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]  # not -11 (SIGSEGV)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"chunk file {data_dir / 'val' / 'chunk-0-0.bin'}" in lines[0]


def _png() -> bytes:
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8))
    return encode_png(image).numpy().tobytes()


def test_every_damaged_byte_of_a_png_is_found_before_decoding():
    png = _png()
    check_encoded_image(png)
    for position in range(8, len(png)):  # past the signature: damage there makes it no image torchvision knows
        damaged = bytearray(png)
        damaged[position] ^= 0xFF
        with pytest.raises(ValueError):
            check_encoded_image(bytes(damaged))
    for length in range(8, len(png)):
        with pytest.raises(ValueError):
            check_encoded_image(png[:length])


def test_a_jpeg_cut_before_its_image_data_is_found():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    check_encoded_image(jpeg)
    start_of_scan = jpeg.index(b"\xff\xda")
    for length in (2, 10, start_of_scan):
        with pytest.raises(ValueError):
            check_encoded_image(jpeg[:length])
