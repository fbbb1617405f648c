"""Where cached tensors live: process memory, or files on disk that are memory-mapped back."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

import torch

from kd_lightning.cache._disk import check_directory, check_room, crc32_of_tensor, removed_if_the_disk_fills
from kd_lightning.errors import ConfigError, InvalidDataError
from kd_lightning.safe_load import safe_torch_load

Storage = Literal["memory", "disk"]

REBUILD = "delete it to rebuild the cache"
CHECKSUMS = "crc32"  # an entry's tensor of per-tensor CRC-32s, in the order of the sorted tensor names


def read_entry(path: Path) -> dict[str, torch.Tensor]:
    """One disk entry, memory-mapped and read without running code (``weights_only=True``), its checksums verified.

    Raises:
        InvalidDataError: the file is empty, truncated, damaged, not a cache entry, or holds pickled
            objects other than tensors (refused unrun). It is never rebuilt silently: a damaged
            entry may mean a damaged disk, and one crafted to run code should be looked at.
    """
    entry = safe_torch_load(path, "cache file", REBUILD, error=InvalidDataError, mmap=True)
    if not isinstance(entry, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in entry.items()
    ):
        raise InvalidDataError(f"{path} is not a kd_lightning cache entry (a dict of tensors); delete it to rebuild")
    stored = entry.pop(CHECKSUMS, None)
    if stored is None:
        raise InvalidDataError(f"cache file {path} carries no checksum (an older format); delete it to rebuild")
    if stored.tolist() != _checksums(entry).tolist():
        raise InvalidDataError(f"cache file {path} is damaged (its checksum does not match); delete it to rebuild")
    return entry


def _checksums(entry: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tensor([crc32_of_tensor(entry[name]) for name in sorted(entry)], dtype=torch.int64)


class CacheStore:
    """A key → ``dict[str, Tensor]`` store.

    ``"memory"`` keeps entries in this object (they survive repeated ``fit`` calls of the same
    module). ``"disk"`` writes one ``<key>.pt`` file per entry under ``cache_dir``, with a checksum
    of every tensor, and loads it with ``mmap=True``, so an entry larger than RAM pages in on
    demand and later runs (or other processes) reuse it. A changed key simply misses, which is how
    a stale entry is rebuilt. Processes that fill one entry at once each write their own temp
    file; the last to finish puts its (identical) entry in place.

    Args:
        storage: ``"memory"`` or ``"disk"``.
        cache_dir: directory of the disk entries.
        setting: the config key of ``cache_dir``, named in errors.
    """

    def __init__(
        self, storage: Storage = "memory", cache_dir: str | Path = ".kd_cache", setting: str = "cache_dir"
    ) -> None:
        if storage not in ("memory", "disk"):
            raise ConfigError(f"storage must be 'memory' or 'disk', got {storage!r}")
        self.storage = storage
        self.cache_dir = Path(cache_dir)
        self.setting = setting
        if storage == "disk":
            check_directory(self.cache_dir, setting)
        self._slots: dict[str, tuple[str, dict[str, torch.Tensor]]] = {}

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.pt"

    def get(self, key: str, slot: str = "default") -> dict[str, torch.Tensor] | None:
        """The entry stored under ``key``, or ``None``.

        Args:
            slot: in memory, each slot (e.g. ``"train"``, ``"val"``) holds one live entry, so a
                stale entry is dropped as soon as its replacement is stored.
        """
        if self.storage == "memory":
            stored_key, entry = self._slots.get(slot, (None, None))
            return entry if stored_key == key else None
        path = self.path(key)
        if not path.exists():
            return None
        return read_entry(path)

    def put(self, key: str, entry: dict[str, torch.Tensor], slot: str = "default") -> dict[str, torch.Tensor]:
        """Store ``entry`` and return what later ``get`` calls will see (memory-mapped on disk)."""
        if self.storage == "memory":
            self._slots[slot] = (key, entry)
            return entry
        check_directory(self.cache_dir, self.setting)
        entry = {name: t.contiguous() for name, t in entry.items()}
        size = sum(t.nbytes for t in entry.values())
        check_room(self.cache_dir, size, self.setting)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Each writer its own temp file: two runs filling the same entry at once (two jobs on one
        # teacher, DDP ranks on a shared disk) must not truncate or move each other's bytes.
        tmp = self.cache_dir / f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with removed_if_the_disk_fills(self.cache_dir, size, self.setting, tmp):
                with open(tmp, "wb") as file:  # a Python file, so a full disk surfaces as its OSError
                    torch.save(entry | {CHECKSUMS: _checksums(entry)}, file)
                    file.flush()
                    os.fsync(file.fileno())
            tmp.replace(self.path(key))  # atomic: a crashed write never leaves a truncated entry
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        stored = safe_torch_load(
            self.path(key), "cache file", "delete it to rebuild the cache", error=InvalidDataError, mmap=True
        )
        del stored[CHECKSUMS]
        return stored
