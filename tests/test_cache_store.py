"""Disk cache entries: checksummed, refused in one line when damaged, and never left half-written by a full disk."""

from __future__ import annotations

import errno
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from kd_lightning.cache import CacheStore
from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import ConfigError, InvalidDataError
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from tests.conftest import make_trainer
from tests.test_mapped_entries import zero_bytes
from tests.test_teacher_cache import STUDENT

ENTRY = {"logits": torch.arange(40_000, dtype=torch.float32).reshape(4000, 10), "labels": torch.arange(4000)}


def no_room(*args, **kwargs) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_entry_reads_back_as_written_and_without_its_checksum(tmp_path):
    store = CacheStore("disk", tmp_path)
    returned = store.put("k", ENTRY)
    read = store.get("k")
    assert sorted(read) == sorted(returned) == ["labels", "logits"]
    assert all(torch.equal(read[name], ENTRY[name]) and torch.equal(returned[name], ENTRY[name]) for name in ENTRY)


def test_two_writers_filling_one_entry_at_once_both_succeed_and_leave_no_temp_file(tmp_path, monkeypatch):
    # Two runs on one teacher compute the same entry; the second starts writing while the first
    # is between its fsync and its rename. A shared temp name made the first one's rename fail.
    first, second = CacheStore("disk", tmp_path), CacheStore("disk", tmp_path)
    real_fsync, interleaved = os.fsync, []

    def fsync_then_let_the_other_writer_in(fd: int) -> None:
        real_fsync(fd)
        if not interleaved:
            interleaved.append(True)
            second.put("k", ENTRY)

    monkeypatch.setattr(os, "fsync", fsync_then_let_the_other_writer_in)
    first.put("k", ENTRY)
    assert interleaved
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"]
    assert all(torch.equal(first.get("k")[name], ENTRY[name]) for name in ENTRY)


def test_zeroed_bytes_in_the_middle_of_an_entry_are_refused_naming_the_file(tmp_path):
    store = CacheStore("disk", tmp_path)
    store.put("k", ENTRY)
    size = store.path("k").stat().st_size
    zero_bytes(store.path("k"), size // 2 - 2048, 4096)  # 4 KB of the tensor data, the file size unchanged
    with pytest.raises(InvalidDataError, match=rf"cache file {store.path('k')} is damaged .*delete it") as caught:
        store.get("k")
    assert "\n" not in str(caught.value)


def test_an_entry_without_checksums_is_refused(tmp_path):
    torch.save(ENTRY, tmp_path / "k.pt")
    with pytest.raises(InvalidDataError, match=r"k\.pt carries no checksum .*delete it to rebuild"):
        CacheStore("disk", tmp_path).get("k")


class FillingFile:
    """A file on a disk that fills after 4 KB: later writes fail with ENOSPC."""

    def __init__(self, path: str, mode: str) -> None:
        self.file, self.written = open(path, mode), 0

    def write(self, data: bytes) -> int:
        if self.written > 4096:
            no_room()
        self.written += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def __enter__(self) -> FillingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()


@pytest.mark.parametrize("call", ["write", "fsync"], ids=["torch_save_writes", "flush_to_disk"])
def test_a_full_disk_is_one_line_naming_the_directory_and_leaves_no_partial_file(tmp_path, monkeypatch, call):
    if call == "write":  # torch's writer reports the failed write as a RuntimeError around the OSError
        monkeypatch.setattr("kd_lightning.cache.store.open", FillingFile, raising=False)
    else:
        monkeypatch.setattr(os, "fsync", no_room)
    store = CacheStore("disk", tmp_path / "cache", setting="teacher_cache.directory")
    message = rf"no room for a cache entry of 187.50 KiB under {tmp_path / 'cache'} \(No space left on device\): "
    with pytest.raises(ConfigError, match=message + "free space there or set teacher_cache.directory to a larger"):
        store.put("k", ENTRY)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_disk_too_small_for_the_entry_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=2**30, used=2**30, free=1000))
    store = CacheStore("disk", tmp_path / "cache")
    with pytest.raises(ConfigError, match=r"\(1000 B free\): free space there or set cache_dir to a larger disk"):
        store.put("k", ENTRY)
    assert not (tmp_path / "cache").exists()


def test_a_cache_directory_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConfigError, match=rf"teacher_cache.directory {tmp_path / 'taken'}: .* is a file, not a folder"):
        DistillationModule(
            STUDENT, STUDENT, 10, teacher_cache=TeacherCacheConfig("disk", directory=str(tmp_path / "taken"))
        )
    with pytest.raises(
        ConfigError, match=rf"cache_dir {tmp_path / 'taken' / 'features'}: {tmp_path / 'taken'} is a file"
    ):
        CacheStore("disk", tmp_path / "taken" / "features")


def test_a_damaged_disk_teacher_cache_stops_the_next_fit_naming_the_file(teacher_spec, tmp_path):
    def fit() -> None:
        cache = TeacherCacheConfig("disk", directory=str(tmp_path))
        module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=cache)
        make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(
            module, DigitsDataModule(batch_size=64)
        )

    fit()
    (entry,) = tmp_path.glob("*.pt")
    zero_bytes(entry, entry.stat().st_size // 2, 2048)
    with pytest.raises(InvalidDataError, match=rf"cache file {entry} is damaged"):
        fit()


def test_a_damaged_feature_cache_stops_the_next_fit_naming_the_file(teacher_spec, tmp_path):
    def fit() -> None:
        module = FrozenBackboneFinetuner(
            teacher_spec, num_classes=10, feature_cache="disk", feature_cache_dir=str(tmp_path)
        )
        make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(
            module, DigitsDataModule(batch_size=64)
        )

    fit()
    entries = sorted(tmp_path.glob("*.pt"), key=lambda p: p.stat().st_size)
    smaller = entries[0]  # the validation split's features and labels
    zero_bytes(smaller, smaller.stat().st_size - 3000, 1024)  # the label block, near the end
    with pytest.raises(InvalidDataError, match=rf"cache file {smaller} is damaged"):
        fit()
