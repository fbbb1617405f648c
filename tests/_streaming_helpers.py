"""Child process of the streaming tests: a short fit over a prepared (LitData) data set.

``python tests/_streaming_helpers.py CONFIG_JSON``. The config names the prepared folder
(``data_dir``), the output folder (``root``), ``devices`` (2 = DDP on two CPU processes, gloo) and
optionally ``kill_at`` (SIGKILL after that optimizer step), ``resume`` (fit from ``last``) or
``module`` (more DistillationModule arguments, e.g. the teacher cache), ``fail_fill_on_rank``
(computing the teacher cache fails on that rank alone, as a bad image would). Each rank writes
``rank{N}.pt``: the sample indices of every training batch per epoch, the trained network's state
dict, the last logged metrics and, with a teacher cache, the largest difference between a batch's
cached teacher logits and a fresh teacher forward on the batch's images; a rank whose fit raised
writes ``error{N}.txt`` (the exception's type and message) instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from kd_lightning.cache.teacher.streamed import _CacheFiller
from kd_lightning.checkpointing import SafeCheckpointIO
from kd_lightning.data.streaming import StreamingImageDataModule
from kd_lightning.errors import InvalidDataError
from kd_lightning.modules import DistillationModule
from tests._resume_helpers import KillAt


class RecordIndices(Callback):
    """The training-set indices of every batch this rank trained on, per epoch."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = {}
        self.teacher_error: float | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.setdefault(trainer.current_epoch, []).extend(batch.indices.tolist())
        if batch.teacher is not None:
            error = (pl_module.teacher(batch.images).logits - batch.teacher.logits).abs().max().item()
            self.teacher_error = max(error, self.teacher_error or 0.0)


def fail_fill_on(rank: int) -> None:
    """Make filling the teacher cache raise on ``rank`` alone, before it writes anything."""
    fill = _CacheFiller.fill

    def failing(self: _CacheFiller, *args: Any) -> None:
        if self.trainer.global_rank == rank:
            raise InvalidDataError(f"cannot decode a stored image (injected on rank {rank})")
        fill(self, *args)

    _CacheFiller.fill = failing  # type: ignore[method-assign]


def main(config: dict) -> None:
    root = Path(config["root"])
    if config.get("fail_fill_on_rank") is not None:
        fail_fill_on(config["fail_fill_on_rank"])
    L.seed_everything(0)
    teacher = {"name": "small_cnn", "kwargs": {"width": 8}, "weights_path": config["teacher_path"]}
    module = DistillationModule(
        {"name": "small_cnn", "kwargs": {"width": 4}}, teacher, num_classes=10, **config.get("module", {})
    )
    data = StreamingImageDataModule(
        config["data_dir"],
        batch_size=config.get("batch_size", 64),
        num_workers=config.get("num_workers", 2),
        image_size=8,
        random_resized_crop=True,
        crop_padding=1,
        hflip=True,
        return_indices=True,
        samples_per_class=config.get("samples_per_class"),
        drop_remainder=config.get("drop_remainder", False),
    )
    record = RecordIndices()
    callbacks = [record, ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=5, save_last=True)]
    if config.get("kill_at"):
        callbacks.append(KillAt(config["kill_at"]))
    devices = config.get("devices", 1)
    trainer = L.Trainer(
        max_epochs=config.get("max_epochs", 2),
        accelerator="cpu",
        strategy="ddp" if devices > 1 else "auto",
        devices=devices,
        deterministic=True,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    try:
        trainer.fit(module, data, ckpt_path="last" if config.get("resume") else None)
    except Exception as err:  # what each rank raised, for the test to compare
        root.mkdir(parents=True, exist_ok=True)
        (root / f"error{trainer.global_rank}.txt").write_text(f"{type(err).__name__}: {err}")
        raise
    torch.save(
        {
            "seen": record.seen,
            "network": module.network.state_dict(),
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            "train_size": len(data.train_set),
            "teacher_error": record.teacher_error,
        },
        root / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
