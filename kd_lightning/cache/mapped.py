"""Cache entries as raw memory-mapped files, filled in place row by row, by one process or by every DDP rank.

:class:`~kd_lightning.cache.store.CacheStore` writes an entry whole with ``torch.save``, so the
entry must fit in memory first. An entry of a streamed data set (a teacher's outputs for every
ImageNet sample) is written as it is computed instead: one ``<name>.bin`` file per tensor, sized
up front and mapped with ``torch.from_file(shared=True)``, so any process can fill any rows, and
read back later with ``shared=False``: mapped, paged in on demand, never copied whole.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from kd_lightning.errors import InvalidDataError

LAYOUT = "entry.json"  # names, shapes and dtypes of the entry's tensors


def allocate(directory: Path, layout: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Create ``directory`` with one zero-filled file per tensor of ``layout`` (name → shape, dtype)."""
    directory.mkdir(parents=True)
    for name, (shape, dtype) in layout.items():
        torch.from_file(str(directory / f"{name}.bin"), shared=True, size=math.prod(shape), dtype=dtype)
    described = {
        name: {"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
        for name, (shape, dtype) in layout.items()
    }
    (directory / LAYOUT).write_text(json.dumps(described))


def open_entry(directory: Path, writable: bool = False) -> dict[str, torch.Tensor]:
    """The entry's tensors, memory-mapped: ``writable`` ones write through to the files (every process sees them).

    Raises:
        InvalidDataError: the layout is missing or a file does not have its size (a damaged entry,
            never rebuilt silently).
    """
    try:
        layout = json.loads((directory / LAYOUT).read_text())
    except (OSError, ValueError) as err:
        raise InvalidDataError(f"cannot read cache entry {directory}: {err}; delete it to rebuild the cache") from err
    entry = {}
    for name, spec in layout.items():
        shape, dtype = tuple(spec["shape"]), getattr(torch, spec["dtype"])
        path = directory / f"{name}.bin"
        expected = math.prod(shape) * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise InvalidDataError(
                f"{path} is missing or not {expected} bytes; delete {directory} to rebuild the cache"
            )
        entry[name] = torch.from_file(str(path), shared=writable, size=math.prod(shape), dtype=dtype).view(shape)
    return entry


def publish(partial: Path, final: Path) -> None:
    """Move a filled entry to its final name in one step; a concurrent run that got there first wins."""
    try:
        partial.rename(final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(partial)
