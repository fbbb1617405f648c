"""Where ``prepare`` writes: never over its own input, never over what it did not write, never half a folder.

A prepared split is written into a staging folder next to its destination and renamed into
place only once complete, so a failure at any point (a damaged file, a full disk, Ctrl+C)
leaves the previous output as it was and no partial files. The destination is locked for the
duration (as ``fit`` locks its checkpoint folders), so two ``prepare`` runs cannot interleave.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from kd_lightning.errors import ConfigError, KDLightningError
from kd_lightning.run_lock import RunFolderLock, lock_path

# What a prepared split holds: LitData's chunks and index, and prepare's own metadata.
WRITTEN_BY_PREPARE = ("chunk-*.bin", "index.json", "kd_lightning.json")
MARKER = "kd_lightning.json"
STAGING = ".{name}.prepare-{pid}"
# Head room over the estimate: LitData's index and chunk padding, the metadata file.
SPACE_MARGIN = 1.1
SPACE_SLACK = 1 << 20


def check_not_overlapping(out: Path, reads: Path, contains_only: bool = False) -> None:
    """Refuse an output folder that is, contains, or (unless ``contains_only``) lies inside what is read.

    Paths are compared resolved (symlinks followed), so a link to the input is the input.
    """
    out, reads = out.resolve(), reads.resolve()
    if out == reads or out in reads.parents or (not contains_only and reads in out.parents):
        relation = "is" if out == reads else "contains" if out in reads.parents else "is inside"
        raise ConfigError(
            f"the output {out} {relation} the input {reads}: prepare would replace what it reads; "
            "choose an output_dir outside the input"
        )


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to replace ``out`` unless asked to, and unless ``prepare`` wrote everything in it."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output {out} is a file, not a folder; choose another output_dir")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite true to replace it")
    if not (out / MARKER).is_file():
        raise ConfigError(
            f"{out} was not written by kd-lightning prepare (no {MARKER}); --overwrite replaces only a prepared "
            "split: choose another output_dir, or empty that folder yourself"
        )
    foreign = sorted(
        p.name for p in out.iterdir() if not any(fnmatch(p.name, pattern) for pattern in WRITTEN_BY_PREPARE)
    )
    if foreign:
        raise ConfigError(
            f"{out} holds files prepare did not write ({', '.join(foreign[:3])}); --overwrite would delete them: "
            "move them elsewhere first"
        )


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse, before anything is written, a destination whose file system cannot hold ``needed`` bytes."""
    free = shutil.disk_usage(_existing_parent(folder)).free
    wanted = int(needed * SPACE_MARGIN) + SPACE_SLACK
    if free < wanted:
        raise ConfigError(
            f"not enough space for {folder}: about {wanted / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free on its "
            "file system; free some space or choose another output_dir"
        )


def check_name_length(out: Path) -> None:
    """Refuse a name the file system cannot store once staged (a long run name, say), before writing."""
    parent = _existing_parent(out)
    limit = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    longest = max((len(os.fsencode(part)) for part in out.parts), default=0)
    beside = max(len(os.fsencode(p.name)) for p in (staging_path(out), lock_path(out)))
    if max(longest, beside) > limit:
        raise ConfigError(
            f"the output path {out} has a name too long for its file system ({limit} bytes per name, "
            f"{max(longest, beside)} needed for the files prepare writes beside it); choose a shorter output_dir"
        )


def staging_path(out: Path) -> Path:
    return out.parent / STAGING.format(name=out.name, pid=os.getpid())


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Lock ``out``, yield a fresh staging folder beside it, and put it in ``out``'s place on success.

    On any failure the staging folder is removed and ``out`` is left as it was. A full disk, a file
    too large or an over-long name (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``ENAMETOOLONG``) becomes one
    :class:`ConfigError` line.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with RunFolderLock([out], create=False, elsewhere="choose another output_dir"):
            # Left by a killed prepare; no other one can be writing them now: the lock is this one's.
            for leftover in [*out.parent.glob(f".{out.name}.prepare-*"), *out.parent.glob(f".{out.name}.replaced-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
            staging = staging_path(out)
            try:
                staging.mkdir()
                yield staging
                _replace(out, staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except KDLightningError:
        raise
    except OSError as err:
        raise _as_config_error(err, out) from err


def _replace(out: Path, staging: Path) -> None:
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _as_config_error(err: OSError, out: Path) -> OSError | ConfigError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConfigError(
            f"the file system of {out} is full ({os.strerror(err.errno)}); nothing was kept: free some space or "
            "choose another output_dir"
        )
    if err.errno == errno.EFBIG:
        return ConfigError(
            f"a chunk of {out} is larger than its file system or this process's file-size limit (ulimit -f) "
            "allows; nothing was kept: choose a smaller --chunk_bytes or raise the limit"
        )
    if err.errno == errno.ENAMETOOLONG:
        return ConfigError(f"the output path {out} has a name too long for its file system; choose a shorter one")
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return ConfigError(f"the output path {out} runs through a file ({err.filename}); choose another output_dir")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return ConfigError(f"cannot write {out}: {os.strerror(err.errno)}; choose another output_dir")
    return err


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
