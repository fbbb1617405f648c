"""One live run per output folder: a lock file holding the writer's pid, stale locks detected.

Two runs writing ``best.ckpt`` into one folder silently replace each other's checkpoints (every
config's ``ModelCheckpoint`` writes a fixed file name). A run therefore takes each folder it
writes checkpoints to by creating ``.<folder>.kd_lightning.lock`` next to it (``O_EXCL``: one creator
wins; outside the folder, which Lightning expects to hold checkpoints only), and
refuses to start while the lock names a live process. A lock left by a killed run names a dead
pid and is taken over. A lock written on another host cannot be checked from here and counts as
live: the message says which file to delete once that run is known to be gone.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from types import TracebackType

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from kd_lightning.checkpointing import remove_temp_files
from kd_lightning.errors import ConfigError, RunFolderBusyError

LOCK_SUFFIX = ".kd_lightning.lock"


class RunFolderLock:
    """Hold the lock of every folder in ``folders`` for the duration of a ``with`` block.

    Taking a folder also removes the temp files an interrupted checkpoint save left in it (no
    other run can be writing them: the folder is now this run's).

    Raises:
        RunFolderBusyError: a folder is locked by a live process (on entering).
    """

    def __init__(
        self,
        folders: list[Path],
        create: bool = True,
        elsewhere: str = "write this run elsewhere (trainer.default_root_dir / ModelCheckpoint dirpath)",
    ) -> None:
        self.folders = [Path(f) for f in dict.fromkeys(str(Path(f).resolve()) for f in folders)]
        self.create = create
        self.elsewhere = elsewhere
        self._held: list[Path] = []

    def __enter__(self) -> RunFolderLock:
        try:
            for folder in self.folders:
                self._held.append(acquire(folder, self.create, self.elsewhere))
                remove_temp_files(folder)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        for path in self._held:
            if read_owner(path) == _owner():
                path.unlink(missing_ok=True)
        self._held = []


def acquire(folder: Path, create: bool = True, elsewhere: str = "write this run elsewhere") -> Path:
    """Create the lock file of ``folder`` holding this process's pid; return its path.

    ``create`` makes the folder too (else only its parent must exist); ``elsewhere`` is the
    alternative the message offers when the folder is busy.
    """
    path = lock_path(folder)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _unwritable(folder, path, err) from err
    for _ in range(2):  # the second try follows the removal of a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as err:
            if err.errno != errno.EEXIST:
                raise _unwritable(folder, path, err) from err
            owner = read_owner(path)
            if owner is not None and _is_alive(owner):
                pid, host = owner
                raise RunFolderBusyError(
                    f"{folder} is being written by another run (pid {pid} on {host}, lock file {path}); wait for "
                    f"it to finish or {elsewhere}. Delete the lock file only if that run is gone."
                ) from None
            path.unlink(missing_ok=True)
            rank_zero_info(f"removed a stale lock of a run that is no longer alive: {path} ({owner})")
            continue
        with os.fdopen(fd, "w") as f:
            pid, host = _owner()
            f.write(f"{pid} {host}\n")
        return path
    raise RunFolderBusyError(f"{folder}: another run took the lock {path} at the same moment; try again")


def _unwritable(folder: Path, path: Path, err: OSError) -> OSError | ConfigError:
    if err.errno == errno.ENAMETOOLONG:
        return ConfigError(
            f"the folder name {folder.name!r} is too long for its file system once the lock file {path.name!r} is "
            "named after it; choose a shorter run folder (trainer.default_root_dir / ModelCheckpoint dirpath)"
        )
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return ConfigError(f"the run folder {folder} is, or runs through, a file; choose another folder")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC):
        return ConfigError(
            f"cannot write the lock file {path}: {os.strerror(err.errno or 0)}; write this run elsewhere"
        )
    return err


def lock_path(folder: Path) -> Path:
    """``parent/.<name>.kd_lightning.lock`` for ``parent/<name>``."""
    folder = folder.resolve()
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def read_owner(path: Path) -> tuple[int, str] | None:
    """``(pid, host)`` written in a lock file, or ``None`` when it is missing or unreadable."""
    try:
        pid, host = path.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


def _owner() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def _is_alive(owner: tuple[int, str]) -> bool:
    pid, host = owner
    if host != socket.gethostname():
        return True  # another machine's process: no way to tell, so never steal its folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def checkpoint_folders(trainer: L.Trainer) -> list[Path]:
    """The folders a fit writes fixed-name checkpoints to, on the process that writes them.

    A ``ModelCheckpoint`` without ``dirpath`` writes under the logger's version folder, new for
    every run, unless there is no logger: then under ``default_root_dir/checkpoints``.
    """
    if trainer.global_rank != 0:
        return []
    folders = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            folders.append(Path(callback.dirpath))
        elif not trainer.loggers:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")
    return folders
