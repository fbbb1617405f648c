"""Checkpoint files that are never half-written, never run code when read, and match the config they meet.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction: the bytes go to a temp
file in the *system* temp folder, then ``shutil.move`` puts them in place. When that folder is
on another file system (a ``/tmp`` tmpfs, a container volume) the move is a copy, and a job
killed during the copy leaves a truncated ``last.ckpt`` behind; nothing is fsynced either.
Its loader also defaults to ``weights_only=False`` for ``--ckpt_path``, which unpickles
arbitrary objects. :class:`SafeCheckpointIO` fixes both for local paths, refuses checkpoints
whose weights are not finite (flipped bits that still unpickle), and removes the temp files a
killed save left behind.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from kd_lightning.errors import CheckpointError, ConfigError, NonFiniteError
from kd_lightning.safe_load import safe_torch_load, unreadable_error

# ``atomic_torch_save``'s temp files: ``.<name>.<random>.tmp`` next to the target.
TEMP_SUFFIX = ".tmp"
# Where checkpoints record the ``(C, H, W)`` of the training images as the network saw them, so that
# evaluation, report and export can check the data they are given against it.
INPUT_SHAPE_KEY = "kd_lightning_input_shape"
# Settings that change how fast a run goes, not what it computes: free to differ from a checkpoint's.
SPEED_ONLY = frozenset({"compile", "channels_last", "num_workers"})
# What to do with a checkpoint that cannot be read.
USE_ANOTHER = "use another checkpoint, or one saved by a Trainer (weights alone: torch.save(model.state_dict(), path))"


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
        if _is_local_file_protocol(path):
            return read_checkpoint(path, map_location)
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated, corrupt or unsafe: torch raises several types
            raise unreadable_error(path, err, "checkpoint", USE_ANOTHER) from err
        check_finite_state(checkpoint, path)
        return checkpoint


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A local Lightning checkpoint, read without running code (``weights_only=True``) and checked.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, holds pickled objects
            other than tensors and plain values, or is not a checkpoint dictionary.
        NonFiniteError: a weight of its ``state_dict`` is NaN or infinite.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check --ckpt_path, relative to {Path.cwd()})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    checkpoint = safe_torch_load(path, "checkpoint", USE_ANOTHER, map_location=map_location)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict); was it saved by a Trainer?")
    check_finite_state(checkpoint, path)
    return checkpoint


def check_finite_state(checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose floating-point weights hold NaN or infinity.

    A file with flipped bits can still unpickle; evaluated, it gives ``nan`` metrics that look like
    a result. A run that diverged is stopped before it saves (``NonFiniteLossGuard``), so a
    non-finite weight means a damaged file.
    """
    state = checkpoint.get("state_dict", {})
    bad = [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise NonFiniteError(
            f"checkpoint {path} holds non-finite weights in {len(bad)} tensors ({shown}): the file is damaged; "
            "use another checkpoint"
        )


def check_finite_metrics(metrics: Mapping[str, Any], stage: str) -> None:
    """Refuse an evaluation whose logged metrics are NaN or infinite instead of reporting them."""
    bad = {
        name: float(value)
        for name, value in metrics.items()
        if (isinstance(value, float) or (isinstance(value, torch.Tensor) and value.numel() == 1))
        and not math.isfinite(float(value))
    }
    if bad:
        shown = ", ".join(f"{name}={value}" for name, value in sorted(bad.items()))
        raise NonFiniteError(
            f"{stage} produced non-finite metrics ({shown}): the weights or the data hold NaN/inf values"
        )


def resolve_ckpt_keyword(trainer: L.Trainer, subcommand: str, ckpt_path: str) -> str:
    """The file ``--ckpt_path last``/``best`` stands for, found the way the Trainer would find it.

    Lightning starts afresh when ``last`` finds nothing (so it can be set before the first run);
    on the command line that would silently train from scratch and overwrite ``best.ckpt``.

    Raises:
        ConfigError: no such checkpoint exists.
    """
    if ckpt_path not in ("last", "best"):
        return ckpt_path
    connector = trainer._checkpoint_connector
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "no last checkpoint" warning becomes the error below
        try:
            resolved = connector._parse_ckpt_path(
                TrainerFn(subcommand), ckpt_path, model_provided=True, model_connected=False
            )
        except ValueError as err:
            raise ConfigError(f"--ckpt_path {ckpt_path}: {err}") from err
    if not resolved:
        callbacks = trainer.checkpoint_callbacks
        folders = sorted({str(getattr(cb, "dirpath", None) or trainer.default_root_dir) for cb in callbacks})
        raise ConfigError(
            f"--ckpt_path {ckpt_path}: no {ckpt_path} checkpoint in {folders or [trainer.default_root_dir]}. "
            "Keep one with ModelCheckpoint(save_last: true), give a checkpoint file, or start without --ckpt_path."
        )
    return str(resolved)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync it, then ``os.replace`` it into place.

    ``os.replace`` within one folder is atomic on POSIX and Windows, so readers see either the
    old file or the complete new one, whatever moment the process dies at.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(path.parent, path.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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


def remove_temp_files(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temp files a killed :func:`atomic_torch_save` of ``folder/name`` left behind.

    Called before every save of ``name`` (one process writes a given file: a run's output folder
    is locked, see :mod:`kd_lightning.run_lock`), and for every name when a run takes the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.glob(f".{name}.*{TEMP_SUFFIX}") if p.is_file()]
    for leftover in removed:
        leftover.unlink(missing_ok=True)
    if removed:
        rank_zero_info(f"removed {len(removed)} temp files of an interrupted checkpoint save in {folder}")
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_checkpoint_class(checkpoint: dict[str, Any], class_path: str, path: str | Path | None) -> None:
    """Refuse a checkpoint saved by the CLI from another module class than ``class_path``.

    Classes are compared by name, never imported: a checkpoint is data, and importing the module
    it names would run that module's code. (``kd_lightning.modules.X`` and
    ``kd_lightning.modules.distiller.X`` name one class.)
    """
    saved = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if isinstance(saved, str) and saved.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
        raise ConfigError(
            f"--ckpt_path {path} is a checkpoint of {saved}, but the config builds {class_path}: give the config "
            "the checkpoint was trained with (e.g. a teacher's checkpoint needs the teacher's config)"
        )


def check_checkpoint_config(
    checkpoint: dict[str, Any],
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    path: str | Path | None,
    stage: str,
    adopt_flag: str | None = None,
) -> None:
    """Refuse a checkpoint whose settings differ from the config's, listing each difference.

    Lightning would otherwise silently take the model settings from one and the weights from the
    other (or train a teacher checkpoint into a distillation folder). Model settings must match
    for every stage; data settings too when resuming a fit, since the run would change mid-way
    (evaluating on other data is what ``test`` is for). Speed-only switches may differ.

    Raises:
        ConfigError: another module class, or the list of differing settings with both values.
    """
    module_class = f"{type(module).__module__}.{type(module).__qualname__}"
    check_checkpoint_class(checkpoint, module_class, path)
    changes = _diff(checkpoint.get("hyper_parameters", {}), dict(module.hparams), "model.")
    if stage == "fit" and datamodule is not None:
        changes += _diff(checkpoint.get("datamodule_hyper_parameters", {}), dict(datamodule.hparams), "data.")
    shape = checkpoint.get(INPUT_SHAPE_KEY)
    size = getattr(datamodule, "image_size", None)
    if stage != "fit" and isinstance(shape, list | tuple) and len(shape) == 3 and isinstance(size, int):
        # Checked here, before the run writes anything; the channels only once a batch shows them.
        check_input_shape(tuple(shape), (None, size, size), getattr(module, "network", None), path)
    if changes:
        fix = "use the config it was saved with"
        if adopt_flag:
            fix += f", or add --{adopt_flag} true to take the checkpoint's model settings"
        raise ConfigError(
            f"--ckpt_path {path} was saved with another config: " + "; ".join(changes) + f". To {stage} it, {fix}."
        )


def check_input_shape(
    trained: tuple[int, ...], given: tuple[int | None, ...], network: Any, path: str | Path | None
) -> None:
    """Refuse evaluation data of another channel count or image size than the checkpoint was trained
    on (``None`` in ``given``: not known yet)."""
    if input_shape_differs(trained, given, network):
        shown = ["×".join(str(v) for v in shape if v is not None) for shape in (trained, given)]
        raise ConfigError(
            f"--ckpt_path {path} was trained on {shown[0]} images but the data gives {shown[1]}: "
            "evaluate it with the data settings it was trained with (channels, image_size)"
        )


def input_shape_differs(trained: tuple[int, ...], given: tuple[int | None, ...], network: Any) -> bool:
    """Whether ``[C, H, W]`` data ``given`` (``None``: not known yet) is not what ``network`` was trained on.

    A network that resizes its input itself (a per-model input size) takes any image size, not
    another channel count.
    """
    resizes = getattr(getattr(network, "input_adapter", None), "resize_to", None) is not None
    channels_differ = given[0] is not None and given[0] != trained[0]
    size_differs = not resizes and any(g is not None and g != t for t, g in zip(trained[1:], given[1:], strict=True))
    return channels_differ or size_differs


def _diff(saved: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    """``key: checkpoint X, config Y`` for every differing hyper-parameter (private ``_`` keys and
    speed-only switches aside)."""
    keys = sorted(k for k in saved.keys() | current.keys() if not str(k).startswith("_") and k not in SPEED_ONLY)
    missing = object()
    return [
        f"{prefix}{k}: checkpoint {saved.get(k, '<unset>')!r}, config {current.get(k, '<unset>')!r}"
        for k in keys
        if saved.get(k, missing) != current.get(k, missing)
    ]


def use_safe_checkpoint_io(trainer: L.Trainer) -> None:
    """Swap Lightning's default checkpoint writer/reader for :class:`SafeCheckpointIO`.

    A ``CheckpointIO`` plugin the user configured is kept as it is.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
