"""``prepare`` never deletes or overwrites what it reads or did not write, and a failure leaves nothing half-written.

Every refusal is one ``error:`` line (exit status 2, no traceback) that leaves the input and any
earlier output byte-identical and no partial files beside them.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kd_lightning.cli import main
from kd_lightning.data import StreamingImageDataModule, output_folder
from kd_lightning.data._litdata import BinaryWriter
from kd_lightning.data.prepare import parse_chunk_bytes
from kd_lightning.errors import InvalidDataError
from kd_lightning.run_lock import lock_path
from tests._bad_input_helpers import snapshot, user_error_line
from tests.conftest import hang_guard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path) -> Path:
    """``tmp/images/{a,b}/*.png``: two classes of three 8x8 images."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "images"


def _prepare(source: Path | str, out: Path, *flags: str) -> list[str]:
    return ["prepare", str(source), str(out), "--verbose", "false", *flags]


@pytest.mark.parametrize(
    "output",
    [
        lambda images: images.parent,  # OUTPUT/train is the input (the reported case)
        lambda images: images / "a",  # inside the input
        lambda images: images / "nested" / "deeper",
    ],
    ids=["is", "inside", "deep_inside"],
)
def test_an_output_that_is_or_is_inside_the_input_is_refused(images, capsys, output):
    """Renamed to ``train``, the input becomes OUTPUT/train itself: refused whatever the flags."""
    source = images.rename(images.parent / "train")
    before = snapshot(source.parent)
    line = user_error_line(capsys, _prepare(source, output(source), "--overwrite", "true"))
    assert "prepare would replace what it reads; choose an output_dir outside the input" in line
    assert snapshot(source.parent) == before


def test_an_output_that_contains_the_input_through_a_link_is_refused(images, tmp_path, capsys):
    (tmp_path / "link").symlink_to(images.parent, target_is_directory=True)
    source = images.rename(images.parent / "train")
    before = snapshot(source)
    line = user_error_line(capsys, _prepare(source, tmp_path / "link", "--overwrite", "true"))
    assert f"is the input {source}" in line
    assert snapshot(source) == before


def test_overwrite_replaces_only_a_prepared_split(images, tmp_path, capsys):
    mine = tmp_path / "mine" / "train"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("not prepare's")
    line = user_error_line(capsys, _prepare(images, mine.parent, "--overwrite", "true"))
    assert "was not written by kd-lightning prepare (no kd_lightning.json)" in line
    assert (mine / "notes.txt").read_text() == "not prepare's"

    out = tmp_path / "out"
    main(_prepare(images, out))
    (out / "train" / "notes.txt").write_text("added by hand")
    before = snapshot(out)
    line = user_error_line(capsys, _prepare(images, out, "--overwrite", "true"))
    assert "holds files prepare did not write (notes.txt)" in line
    assert snapshot(out) == before


def test_a_failed_overwrite_keeps_the_earlier_split_byte_identical(images, tmp_path, capsys, monkeypatch):
    """A full disk halfway through the new split: one line, the old split untouched, no staging left."""
    out = tmp_path / "out"
    main(_prepare(images, out))
    before = snapshot(out)

    written = []

    def full_disk_at_the_second_chunk(self, raw_data, filename, compress=None):
        (Path(self._cache_dir) / filename).write_bytes(raw_data if not written else raw_data[:100])
        written.append(filename)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(BinaryWriter, "write_chunk_to_file", full_disk_at_the_second_chunk)
    line = user_error_line(capsys, _prepare(images, out, "--overwrite", "true", "--chunk_bytes", "500"))
    assert written == ["chunk-0-0.bin", "chunk-0-1.bin"]
    assert f"the file system of {out / 'train'} is full" in line and "nothing was kept" in line
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["train"]


# A fault while the chunks are written, in a separate process (a regression is a hang: the
# timeout fails it). The earlier split of the same images holds one chunk of about 1.8 KB: the
# full disk strikes at its last (only) write, which litdata.optimize waited on forever.
FAULTS = {
    "full_disk": (
        ("full_disk:500", "--chunk_bytes", "1MB"),
        "the file system of {split} is full (No space left on device); nothing was kept: free some space or "
        "choose another output_dir",
    ),
    "file_size_limit": (
        ("file_size_limit:1000", "--chunk_bytes", "1MB", "--num_workers", "2"),
        "a chunk of {split} is larger than its file system or this process's file-size limit (ulimit -f) allows",
    ),
    "worker_crashed": (
        ("worker_signal:SIGSEGV:3", "--num_workers", "2"),
        "crashed (SIGSEGV) while handling {images}/a/0.png … {images}/b/2.png; check or remove those inputs",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_a_fault_while_writing_chunks_is_one_line_and_keeps_the_earlier_split(images, tmp_path, fault):
    (name, *flags), expected = FAULTS[fault]
    out = tmp_path / "out"
    main(_prepare(images, out))
    before = snapshot(out)
    argv = _prepare(images, out, "--overwrite", "true", *flags)
    command = [sys.executable, "-m", "tests._prepare_faults", name, *argv]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert expected.format(split=out / "train", images=images) in lines[0]
    assert snapshot(out) == before  # no staging folder, no lock file, the earlier split as it was


def test_prepare_in_a_job_that_exports_world_size_writes_the_same_split(images, tmp_path, monkeypatch):
    """torchrun and Lightning export ``WORLD_SIZE``; LitData's writer then waits for the chunk
    index of every process it counts, and prepare is one process."""
    main(_prepare(images, tmp_path / "alone"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with hang_guard():
        main(_prepare(images, tmp_path / "in_a_job"))
    alone, in_a_job = snapshot(tmp_path / "alone"), snapshot(tmp_path / "in_a_job")
    assert sorted(alone) == sorted(in_a_job) == ["train/chunk-0-0.bin", "train/index.json", "train/kd_lightning.json"]
    assert alone["train/chunk-0-0.bin"] == in_a_job["train/chunk-0-0.bin"]
    indexes = [json.loads((tmp_path / run / "train" / "index.json").read_text()) for run in ("alone", "in_a_job")]
    assert indexes[0]["chunks"] == indexes[1]["chunks"]


def test_too_little_free_space_is_refused_before_writing(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(output_folder.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    line = user_error_line(capsys, _prepare(images, tmp_path / "out"))
    assert "not enough space for" in line and "MiB free on its file system" in line
    assert not (tmp_path / "out").exists()


def test_a_folder_another_prepare_is_writing_is_refused(images, tmp_path, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out" / "train"
        out.parent.mkdir()
        lock_path(out).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        line = user_error_line(capsys, _prepare(images, out.parent))
        assert f"is being written by another run (pid {sleeper.pid}" in line and "choose another output_dir" in line
        assert not out.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    ("make_output", "expected"),
    [
        (lambda tmp: tmp / "file", "runs through a file"),
        (lambda tmp: tmp / "file" / "below", "runs through a file"),
        (lambda tmp: tmp / "x" / ("n" * 300), "has a name too long for its file system"),
        (lambda tmp: tmp / ("n" * 250), None),  # fits: 250 bytes
    ],
    ids=["file", "below_a_file", "name_too_long", "long_name_that_fits"],
)
def test_output_paths_the_file_system_cannot_hold(images, tmp_path, capsys, make_output, expected):
    (tmp_path / "file").write_text("a file")
    output = make_output(tmp_path)
    if expected is None:
        main(_prepare(images, output))
        assert (output / "train" / "kd_lightning.json").is_file()
        return
    before = snapshot(tmp_path)
    assert expected in user_error_line(capsys, _prepare(images, output))
    assert snapshot(tmp_path) == before


def test_a_split_that_is_a_file_is_refused(images, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train").write_text("a file")
    line = user_error_line(capsys, _prepare(images, tmp_path / "out", "--overwrite", "true"))
    assert "is a file, not a folder" in line
    assert (tmp_path / "out" / "train").read_text() == "a file"


@pytest.mark.parametrize("value", ["abc", "0", "-5MB", "64XB", "MB"])
def test_a_chunk_size_that_is_not_a_size_is_one_line(images, tmp_path, capsys, value):
    line = user_error_line(capsys, _prepare(images, tmp_path / "out", f"--chunk_bytes={value}"))
    assert f"--chunk_bytes {value!r} is not a size: write one like 64MB" in line
    assert not (tmp_path / "out").exists()


def test_chunk_sizes_are_litdata_s_decimal_units():
    assert [parse_chunk_bytes(v) for v in ("64MB", "1000", "1.5gb", " 512 KB", "2k")] == [
        64_000_000,
        1000,
        1_500_000_000,
        512_000,
        2000,
    ]


@pytest.mark.parametrize("cut", [0, 10, -1])
def test_a_cut_short_metadata_file_is_named(images, tmp_path, cut):
    main(_prepare(images, tmp_path / "out"))
    metadata = tmp_path / "out" / "train" / "kd_lightning.json"
    metadata.write_bytes(metadata.read_bytes()[:cut] if cut >= 0 else b'{"labels": []}')
    with pytest.raises(InvalidDataError, match=rf"{metadata} is damaged or cut short .* --overwrite true\)"):
        StreamingImageDataModule(str(tmp_path / "out"))
