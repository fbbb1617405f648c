"""Child process of the resume tests: one fit, optionally SIGKILLed at a step or resumed from ``last``.

Run as ``python tests/_resume_helpers.py CONFIG_JSON``; the config says what to build (see ``build``).
Writes ``final.pt`` (the trained network's state dict and the last logged metrics) into ``root``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from kd_lightning.checkpointing import SafeCheckpointIO
from kd_lightning.data import DigitsDataModule
from kd_lightning.models import create_model
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner


class KillAt(Callback):
    """SIGKILL this process right after the optimizer step ``step`` (no cleanup, like an OOM kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def make_teacher(path: Path) -> None:
    torch.manual_seed(1)
    torch.save(create_model("small_cnn", 10, width=8).state_dict(), path)


def build(config: dict) -> tuple[L.LightningModule, DigitsDataModule]:
    teacher = {"name": "small_cnn", "kwargs": {"width": 8}, "weights_path": config["teacher_path"]}
    if config["kind"] == "distiller":
        module = DistillationModule(
            student={"name": "small_cnn", "kwargs": {"width": 4}},
            teacher=teacher,
            num_classes=10,
            **config.get("module", {}),
        )
    else:
        backbone = teacher if config["strategy"] != "full" else {"name": "small_cnn", "kwargs": {"width": 4}}
        # A per-epoch StepLR too, so the scheduler's state has to survive the resume.
        scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
        module = FrozenBackboneFinetuner(
            backbone, 10, strategy=config["strategy"], unfreeze_at_epoch=1, lr_scheduler=scheduler
        )
    data = DigitsDataModule(batch_size=64, crop_padding=1, hflip=True, **config.get("data", {}))
    return module, data


def main(config: dict) -> None:
    root = Path(config["root"])
    L.seed_everything(0)
    module, data = build(config)
    callbacks = [ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=5, save_last=True)]
    if config.get("kill_at"):
        callbacks.append(KillAt(config["kill_at"]))
    trainer = L.Trainer(
        max_epochs=config.get("max_epochs", 3),
        accelerator="cpu",
        deterministic=True,
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, data, ckpt_path="last" if config.get("resume") else None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    opt = trainer.optimizers[0]
    torch.save(
        {
            "network": module.network.state_dict(),
            "metrics": metrics,
            "param_groups": [len(g["params"]) for g in opt.param_groups],
            "lrs": [g["lr"] for g in opt.param_groups],
            "backbone_trainable": all(p.requires_grad for p in module.network.backbone.parameters()),
        },
        root / "final.pt",
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
