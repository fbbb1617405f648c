"""Read an offline W&B run back from its ``run-*.wandb`` transaction log (no account, no server).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
chunks, each ``crc32 (4) | length (2) | type (1) | payload``; a record is one FULL chunk or a
FIRST, MIDDLE..., LAST sequence of protobuf ``Record`` bytes.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32768
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:
            pos += left_in_block
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        if pos + CHUNK_HEADER.size + length > len(data):
            return  # a chunk still being written
        payload = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        pos += CHUNK_HEADER.size + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_records(log: Path, timeout_s: float = 30.0) -> list[wandb_internal_pb2.Record]:
    """The run's records once its ``exit`` record is on disk: ``wandb.finish()`` can return while the
    separate ``wandb-core`` process is still writing the log."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(read_records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def offline_run(wandb_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The (config, history rows) of the single offline run under ``wandb_dir``."""
    (log,) = wandb_dir.glob("wandb/offline-run-*/run-*.wandb")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for record in finished_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            items = record.history.item
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return config, history
