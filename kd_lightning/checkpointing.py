"""Checkpoint files that are never half-written and never run code when read.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction: the bytes go to a temp
file in the *system* temp folder, then ``shutil.move`` puts them in place. When that folder is
on another file system (a ``/tmp`` tmpfs, a container volume) the move is a copy, and a job
killed during the copy leaves a truncated ``last.ckpt`` behind; nothing is fsynced either.
Its loader also defaults to ``weights_only=False`` for ``--ckpt_path``, which unpickles
arbitrary objects. :class:`SafeCheckpointIO` fixes both for local paths.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

from kd_lightning.models.weights import CheckpointError


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic local saves (temp file in the same folder, fsync, ``os.replace``); safe loads.

    Remote paths (``s3://`` ...) keep Lightning's own writer, whose object stores publish an
    object only once fully uploaded. Loads always use ``weights_only=True``: a kd_lightning
    checkpoint holds only tensors and plain Python values.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options for local paths")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(
                "kd_lightning loads checkpoints with weights_only=True only; a checkpoint that needs "
                "weights_only=False holds pickled objects that could run code"
            )
        if _is_local_file_protocol(path) and not Path(path).is_file():
            raise CheckpointError(f"checkpoint not found: {path} (check --ckpt_path; 'last' needs save_last=True)")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated, corrupt or unsafe: torch raises several types
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(
                f"cannot read checkpoint {path}: {first_line}. The file is truncated, corrupt, or holds "
                "pickled objects other than tensors and plain values (refused: they could run code)."
            ) from err


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync it, then ``os.replace`` it into place.

    ``os.replace`` within one folder is atomic on POSIX and Windows, so readers see either the
    old file or the complete new one, whatever moment the process dies at.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; keep what a plain open gives
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def use_safe_checkpoint_io(trainer: L.Trainer) -> None:
    """Swap Lightning's default checkpoint writer/reader for :class:`SafeCheckpointIO`.

    A ``CheckpointIO`` plugin the user configured is kept as it is.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
