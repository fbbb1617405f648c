"""Reading the IDX files of MNIST-style data sets, gzipped or not."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from kd_lightning.errors import InvalidDataError

# IDX type codes (third byte of the magic number) and the numpy types they stand for.
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (``.gz`` or uncompressed) into a tensor of its stored shape.

    Raises:
        InvalidDataError: the file is empty, a damaged ``.gz``, not an IDX file, or its size
            disagrees with its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise InvalidDataError(f"cannot read {path}: {err} (a damaged or truncated download?)") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise InvalidDataError(f"{path} is not an IDX file (empty, or a bad magic number)")
    ndim = data[3]
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise InvalidDataError(f"{path} is not an IDX file (its header is cut short)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[data[2]]
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise InvalidDataError(
            f"{path} is truncated or corrupt: header says {expected} bytes of data, found {len(data) - offset}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def find_idx(name: str, folders: list[Path]) -> Path | None:
    """The first ``name`` or ``name.gz`` in ``folders`` (uncompressed preferred: it reads faster)."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None
