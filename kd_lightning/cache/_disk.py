"""Cache folders on real disks: refused when they are files, checked for room, and cleaned up when the disk fills."""

from __future__ import annotations

import errno
import shutil
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from kd_lightning.errors import ConfigError

NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_CHUNK = 16 * 2**20


class NoRoomError(ConfigError):
    """The disk of a cache directory has not the room for an entry."""


def check_directory(directory: Path, setting: str) -> None:
    """Refuse a cache directory that is an existing file (or lies below one)."""
    for folder in (directory, *directory.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"{setting} {directory}: {folder} is a file, not a folder; choose another path")
            return


def check_room(directory: Path, size: int, setting: str) -> None:
    """Refuse to start writing ``size`` bytes into ``directory`` when its disk has less room than that."""
    folder = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if free < size:
        raise no_room_error(directory, size, setting, f"{_in_units(free)} free")


def no_room_error(directory: Path, size: int, setting: str, why: str) -> NoRoomError:
    return NoRoomError(
        f"no room for a cache entry of {_in_units(size)} under {directory} ({why}): "
        f"free space there or set {setting} to a larger disk"
    )


def _in_units(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 2**shift:
            return f"{size / 2**shift:.2f} {unit}"
    return f"{size} B"


def disk_full(err: BaseException) -> OSError | None:
    """The full-disk ``OSError`` behind ``err`` (torch's writer re-raises a failed write as a ``RuntimeError``)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_ROOM:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def removed_if_the_disk_fills(directory: Path, size: int, setting: str, *partial: Path) -> Iterator[None]:
    """Turn a full disk while writing into one line naming ``directory``, after removing the ``partial`` files."""
    try:
        yield
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        for path in partial:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise no_room_error(directory, size, setting, full.strerror or "disk full") from err


def crc32_of_tensor(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes: what a cache entry stores beside it to notice damage when read."""
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    crc = 0
    for start in range(0, len(data), _CHUNK):
        crc = zlib.crc32(data[start : start + _CHUNK].numpy().tobytes(), crc)
    return crc


def crc32_of_file(path: Path) -> int:
    """CRC-32 of a file's bytes, read in chunks."""
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc
