"""Child process of the DDP test: a short distillation run, single-process or DDP on two CPU processes.

``python tests/_ddp_helpers.py {single,ddp} OUT_DIR TEACHER_PATH``; each rank writes ``rank{N}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from kd_lightning.cli import use_safe_checkpoint_io
from kd_lightning.data import DigitsDataModule
from kd_lightning.models.fingerprint import state_dict_sha256
from kd_lightning.modules import DistillationModule


class RecordDDP(Callback):
    """What DDP sees of the module: the parameters it syncs and the ones it ignores."""

    def on_train_start(self, trainer, pl_module) -> None:
        ddp = trainer.strategy.model
        self.wrapped = type(ddp).__name__
        ignored = getattr(ddp, "parameters_to_ignore", set())
        self.synced = [n for n, p in pl_module.named_parameters() if p.requires_grad and n not in ignored]
        self.ignored = sorted(ignored)


def main(mode: str, out: Path, teacher_path: str) -> None:
    L.seed_everything(0)
    teacher = {"name": "small_cnn", "kwargs": {"width": 8}, "weights_path": teacher_path}
    module = DistillationModule({"name": "small_cnn", "kwargs": {"width": 4}}, teacher, num_classes=10, alpha=0.5)
    teacher_hash = state_dict_sha256(module.teacher)
    ddp = mode == "ddp"
    record = RecordDDP()
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp" if ddp else "auto",
        devices=2 if ddp else 1,
        max_epochs=4,
        deterministic=True,
        callbacks=[record, ModelCheckpoint(dirpath=out / "ckpt", save_last=True)],
        logger=CSVLogger(out, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    use_safe_checkpoint_io(trainer)
    # The same global batch (64) in both modes: 32 per rank under DDP.
    data = DigitsDataModule(batch_size=32 if ddp else 64, eval_batch_size=32)
    trainer.fit(module, data)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    test = trainer.test(module, data, verbose=False)[0]
    torch.save(
        {
            "world_size": trainer.world_size,
            "wrapped": getattr(record, "wrapped", None),
            "synced": getattr(record, "synced", []),
            "ignored": getattr(record, "ignored", []),
            "teacher_grads": [n for n, p in module.teacher.named_parameters() if p.grad is not None],
            "teacher_unchanged": state_dict_sha256(module.teacher) == teacher_hash,
            "val": val,
            "test": test,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
