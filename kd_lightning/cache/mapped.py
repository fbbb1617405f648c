"""Cache entries as raw memory-mapped files, filled in place row by row, by one process or by every DDP rank.

:class:`~kd_lightning.cache.store.CacheStore` writes an entry whole with ``torch.save``, so the
entry must fit in memory first. An entry of a streamed data set (a teacher's outputs for every
ImageNet sample) is written as it is computed instead: one ``<name>.bin`` file per tensor, sized
up front, into which any process writes any rows (:class:`RowWriter`), and read back with
``torch.from_file``: mapped, paged in on demand, never copied whole.

Rows are written with ``pwrite``, not through a shared mapping: ranks on several nodes write
neighbouring rows of the same pages, and a network file system writes a mapped page back whole,
so the node that flushed a page last would overwrite the others' rows with its stale copy. Written
bytes reach the writing machine's page cache first; :func:`sync` flushes them to the file system
before other nodes are told to read them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from kd_lightning.cache._disk import check_directory, check_room, crc32_of_file, removed_if_the_disk_fills
from kd_lightning.errors import InvalidDataError

LAYOUT = "entry.json"  # names, shapes and dtypes of the entry's tensors

Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


def allocate(directory: Path, layout: Layout, setting: str = "cache_dir") -> None:
    """Create ``directory`` with one zero-filled file per tensor of ``layout`` (name → shape, dtype).

    The files' blocks are reserved now (``posix_fallocate``), not when a row is first written: a
    sparse file on a full disk would kill the process with SIGBUS in the middle of filling it.

    Raises:
        ConfigError: the disk of ``directory`` has not the room (the folder is removed again).
    """
    size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())
    check_directory(directory.parent, setting)
    check_room(directory.parent, size, setting)
    directory.mkdir(parents=True)
    with removed_if_the_disk_fills(directory.parent, size, setting, directory):
        for name, (shape, dtype) in layout.items():
            with open(directory / f"{name}.bin", "wb") as file:
                if math.prod(shape):
                    os.posix_fallocate(file.fileno(), 0, math.prod(shape) * dtype.itemsize)
        described = {
            name: {"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
            for name, (shape, dtype) in layout.items()
        }
        (directory / LAYOUT).write_text(json.dumps(described))
        sync(directory)


def open_entry(directory: Path, names: Iterable[str], verify: bool = True) -> dict[str, torch.Tensor]:
    """The entry's tensors, memory-mapped read-only.

    Args:
        names: the tensors the entry must hold, no more and no fewer (what the reader expects).
        verify: check every file against the checksum :func:`publish` wrote (one read of the
            entry); off for an entry still being filled, which has none yet.

    Raises:
        InvalidDataError: the layout is missing, unreadable or lists other tensors, or a file does
            not have its size or checksum (a damaged entry, never rebuilt silently).
    """
    described = _read_description(directory, names)
    layout = _layout_of(directory, described)
    if verify:
        for name in layout:
            path = directory / f"{name}.bin"
            if described[name].get("crc32") != crc32_of_file(path):
                raise InvalidDataError(
                    f"cache file {path} is damaged (its checksum does not match); delete {directory} to rebuild"
                )
    return {
        name: torch.from_file(str(directory / f"{name}.bin"), size=math.prod(shape), dtype=dtype).view(shape)
        for name, (shape, dtype) in layout.items()
    }


def _read_description(directory: Path, names: Iterable[str]) -> dict[str, dict]:
    """The entry's ``entry.json``, checked to list exactly the expected tensor ``names``."""
    try:
        described = json.loads((directory / LAYOUT).read_text())
    except (OSError, ValueError) as err:
        raise InvalidDataError(f"cannot read cache entry {directory}: {err}; delete it to rebuild the cache") from err
    expected = sorted(names)
    if not isinstance(described, dict) or sorted(described) != expected:
        found = sorted(described) if isinstance(described, dict) else type(described).__name__
        raise InvalidDataError(
            f"cache entry {directory} lists the tensors {found}, not {expected}; delete it to rebuild the cache"
        )
    return described


def _layout_of(directory: Path, described: dict[str, dict]) -> Layout:
    """The layout ``entry.json`` describes, checked against the files' sizes."""
    layout: Layout = {}
    for name, spec in described.items():
        try:
            shape, dtype = tuple(spec["shape"]), getattr(torch, spec["dtype"])
        except (KeyError, TypeError, AttributeError) as err:
            raise InvalidDataError(f"cache entry {directory} describes {name} wrongly ({err}); delete it") from err
        path = directory / f"{name}.bin"
        size = math.prod(shape) * dtype.itemsize
        if not path.is_file() or path.stat().st_size != size:
            raise InvalidDataError(f"{path} is missing or not {size} bytes; delete {directory} to rebuild the cache")
        layout[name] = (shape, dtype)
    return layout


class RowWriter:
    """Writes rows ``[view, index]`` of an entry's ``[num_views, N, ...]`` tensors into its files, byte-exact.

    A context manager: on exit every file is flushed (``fsync``) and closed.
    """

    def __init__(self, directory: Path, names: Iterable[str]) -> None:
        self.layout = _layout_of(directory, _read_description(directory, names))
        self.files = {name: os.open(directory / f"{name}.bin", os.O_WRONLY) for name in self.layout}

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for descriptor in self.files.values():
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    def write(self, name: str, view: int, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Store ``rows[i]`` as row ``index[i]`` of view ``view``; one ``pwrite`` per run of consecutive indices."""
        if not len(index):
            return
        shape, dtype = self.layout[name]
        row_bytes = math.prod(shape[2:]) * dtype.itemsize
        index, order = index.cpu().sort()
        raw = rows.cpu().to(dtype)[order].contiguous().view(torch.uint8).reshape(len(index), row_bytes).numpy()
        breaks = ((index[1:] != index[:-1] + 1).nonzero().flatten() + 1).tolist()
        for start, end in zip([0, *breaks], [*breaks, len(index)], strict=True):
            offset = (view * shape[1] + int(index[start])) * row_bytes
            os.pwrite(self.files[name], raw[start:end].data, offset)


def sync(directory: Path) -> None:
    """Flush every file of the entry and the folder itself to the file system (``fsync``).

    Call it after writing through a mapping and before telling another process (on another
    node, maybe) to read the files: only then are the writes in the shared file system.
    """
    for path in sorted(directory.iterdir()):
        _fsync(path, os.O_RDONLY)
    _fsync(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(partial: Path, final: Path) -> None:
    """Write the checksum of every file, then move the filled entry to its final name in one step.

    A concurrent run that got there first wins.
    """
    described = json.loads((partial / LAYOUT).read_text())
    for name, spec in described.items():
        spec["crc32"] = crc32_of_file(partial / f"{name}.bin")
    tmp = partial / f"{LAYOUT}.tmp"
    tmp.write_text(json.dumps(described))
    tmp.replace(partial / LAYOUT)
    sync(partial)
    try:
        partial.rename(final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(partial)
        return
    _fsync(final.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
