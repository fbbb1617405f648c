"""Run the ``kd-lightning`` command with one fault injected: ``python -m tests._prepare_faults FAULT ARGS...``.

Faults (``NAME:VALUE``), each as an operator meets it:
- ``full_disk:BYTES``: chunk files take ``BYTES`` in all, then the write fails with ``ENOSPC``
  (the rest of the file is cut short, as on a real full disk).
- ``file_size_limit:BYTES``: ``ulimit -f``: a write past ``BYTES`` in one file fails with ``EFBIG``.
- ``worker_signal:SIGNAL:INDEX``: the process converting sample ``INDEX`` dies of ``SIGNAL``.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import sys
from typing import Any

from litdata.streaming.writer import BinaryWriter

from kd_lightning.cli import main
from kd_lightning.data import prepare


def full_disk(budget: str) -> None:
    left = [int(budget)]

    def write_chunk_to_file(self: BinaryWriter, raw_data: bytes, filename: str, compress: bool | None = None) -> None:
        with open(os.path.join(self._cache_dir, filename), "wb") as out:
            out.write(raw_data[: max(left[0], 0)])
        left[0] -= len(raw_data)
        if left[0] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    BinaryWriter.write_chunk_to_file = write_chunk_to_file  # type: ignore[method-assign]


def file_size_limit(limit: str) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))


def worker_signal(name: str, index: str) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not leave a core file behind
    convert = prepare._file_item

    def dying(sample: tuple[int, Any, int]) -> dict[str, Any]:
        if sample[0] == int(index):
            os.kill(os.getpid(), signal.Signals[name])
        return convert(sample)

    prepare._file_item = dying


FAULTS = {"full_disk": full_disk, "file_size_limit": file_size_limit, "worker_signal": worker_signal}

if __name__ == "__main__":
    fault, *values = sys.argv[1].split(":")
    FAULTS[fault](*values)
    main(sys.argv[2:])
