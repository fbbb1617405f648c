"""The one ``torch.load`` of kd_lightning: tensors and plain values only, a failure in one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from kd_lightning.errors import CheckpointError, KDLightningError


def safe_torch_load(
    path: str | Path,
    what: str,
    fix: str,
    *,
    error: type[KDLightningError] = CheckpointError,
    mmap: bool = False,
    map_location: Any = "cpu",
) -> Any:
    """``torch.load(path, weights_only=True)``, which refuses pickled objects unread: they could run code.

    Args:
        what: what the file is, for the message (``"checkpoint"``, ``"cache file"``).
        fix: what the user should do when the file cannot be read.
        error: the project error raised.
        mmap: map the file's tensors instead of reading them (entries larger than RAM page in on demand).

    Raises:
        error: the file is truncated, corrupt, or holds pickled objects other than tensors and plain values.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for truncated, corrupt and unsafe files
        raise unreadable_error(path, err, what, fix, error) from err


def unreadable_error(
    path: str | Path, err: Exception, what: str, fix: str, error: type[KDLightningError] = CheckpointError
) -> KDLightningError:
    """The one-line error for a file ``torch.load`` refused or could not read.

    A file that pickles a whole object (``torch.save(model)``) gets the object's class named:
    torch's own message for it is a paragraph, with terminal escape codes, that suggests an unsafe load.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found is not None:
        return error(
            f"cannot read {what} {path}: it holds a pickled {found.group(1)}, refused unread "
            f"(unpickling an object could run code); {fix}"
        )
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return error(
        f"cannot read {what} {path}: {first_line}. The file is empty, truncated, corrupt, or holds pickled "
        f"objects other than tensors and plain values (refused unread: they could run code); {fix}"
    )
