"""Checks of stored bytes before a C decoder sees them, so that damage is an error, never a crash.

libpng aborts the process (SIGSEGV) on some damaged PNGs instead of reporting them; a PNG's
chunks each carry a CRC-32, so damage anywhere in one is found by walking the chunks first
(``zlib.crc32`` runs at several GB/s: a small share of decoding). A JPEG's marker segments are
walked up to its image data, whose damage libjpeg-turbo itself reports. A LitData chunk cut
short would make LitData wait for the rest of the file until it times out: its size is checked
against the index before anything is read.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from kd_lightning.errors import InvalidDataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"


def check_encoded_image(data: bytes | memoryview) -> None:
    """Raise ``ValueError`` naming the damage if ``data`` is a PNG or JPEG that is not whole and intact.

    Other bytes (a GIF an earlier ``prepare`` stored as it was, or a header too damaged to tell)
    are left to torchvision, which refuses a format it does not know.
    """
    data = memoryview(data)
    if bytes(data[:8]) == PNG_SIGNATURE:
        _check_png(data)
    elif bytes(data[:2]) == JPEG_START:
        _check_jpeg(data)


def _check_png(data: memoryview) -> None:
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        end = position + 12 + length
        if end > len(data):
            raise ValueError("a PNG chunk runs past the end of the image (cut short or damaged)")
        kind = bytes(data[position + 4 : position + 8])
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[position + 4 : end - 4]) != crc:
            raise ValueError(f"PNG chunk {kind.decode('latin-1')!r} fails its CRC check (damaged bytes)")
        if kind == b"IEND":
            return
        position = end
    raise ValueError("the PNG has no end (IEND) chunk: cut short or damaged")


def _check_jpeg(data: memoryview) -> None:
    position = len(JPEG_START)
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {position} (damaged bytes)")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2 or position + 2 + length > len(data):
            raise ValueError("a JPEG segment runs past the end of the image (cut short or damaged)")
        if marker == 0xDA:  # start of scan: the entropy-coded data follows
            return
        position += 2 + length
    raise ValueError("the JPEG ends before its image data (cut short or damaged)")


def check_chunk_files(split_dir: Path) -> list[str]:
    """The chunk file names LitData's ``index.json`` lists, each checked to be there and whole.

    Raises:
        InvalidDataError: the index is damaged, or a chunk is missing or has another size than indexed.
    """
    index = split_dir / "index.json"
    try:
        chunks: list[dict[str, Any]] = json.loads(index.read_bytes())["chunks"]
        expected = [(str(c["filename"]), int(c["chunk_bytes"])) for c in chunks]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidDataError(f"{index} is missing, damaged or cut short ({err}); {PREPARE_AGAIN}") from err
    for name, size in expected:
        path = split_dir / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            found = "missing" if actual is None else f"{actual:,} bytes of the {size:,} its index lists"
            raise InvalidDataError(f"chunk file {path} is {found} (cut short or damaged); {PREPARE_AGAIN}")
    return [name for name, _ in expected]


PREPARE_AGAIN = "prepare the split again (kd-lightning prepare ... --overwrite true)"
