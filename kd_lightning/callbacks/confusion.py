"""End-of-evaluation confusion matrix and per-class teacher-vs-student table."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from kd_lightning.data.batch import Batch


class ConfusionMatrixLogger(Callback):
    """After each validation (and test) epoch, log where the trained network errs, class by class.

    With a :class:`~lightning.pytorch.loggers.WandbLogger` the confusion matrix is a W&B plot and the
    per-class table a W&B Table (``val/confusion_matrix``, ``val/per_class``); otherwise
    ``{stage}_confusion_matrix.png`` and ``{stage}_per_class.csv`` are (over)written in the trainer's
    log directory. The table compares the student with its teacher when the evaluation step
    returned the teacher's logits too (the distiller does), which is where distillation helps or
    hurts. Nothing is run again: predictions come from what each step returned.

    Args:
        stages: evaluation stages to report, from ``"val"`` and ``"test"``.
    """

    def __init__(self, stages: tuple[str, ...] = ("val", "test")) -> None:
        super().__init__()
        unknown = set(stages) - {"val", "test"}
        if unknown:
            raise ValueError(f"stages must be 'val' and/or 'test', got {sorted(unknown)}")
        self.stages = tuple(stages)
        self._preds: list[torch.Tensor] = []
        self._teacher_preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self._collect(pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if "test" in self.stages:
            self._collect(pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" in self.stages:
            self._report(trainer, pl_module, "test")

    def _reset(self) -> None:
        self._preds, self._teacher_preds, self._targets = [], [], []

    def _collect(self, pl_module: L.LightningModule, outputs: Any, batch: Batch) -> None:
        if not isinstance(outputs, dict) or "logits" not in outputs:
            raise TypeError(
                f"{type(self).__name__} reads the evaluation step's output {{'logits': ..., 'teacher_logits': ...}}; "
                f"{type(pl_module).__name__} returned {type(outputs).__name__}"
            )
        self._preds.append(outputs["logits"].argmax(dim=-1).cpu())
        self._targets.append(batch.labels.cpu())
        if "teacher_logits" in outputs:
            self._teacher_preds.append(outputs["teacher_logits"].argmax(dim=-1).cpu())

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._targets or not trainer.is_global_zero:
            return
        num_classes = int(getattr(pl_module, "num_classes", 0)) or int(torch.cat(self._targets).max()) + 1
        names = _class_names(trainer, num_classes)
        targets, preds = torch.cat(self._targets), torch.cat(self._preds)
        teacher = torch.cat(self._teacher_preds) if self._teacher_preds else None
        columns, rows = per_class_table(targets, preds, teacher, names)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            import wandb

            plot = wandb.plot.confusion_matrix(
                y_true=targets.tolist(), preds=preds.tolist(), class_names=names, title=f"{stage} confusion matrix"
            )
            for logger in wandb_loggers:
                # log_metrics is typed for numbers but hands any W&B object (chart, table) to wandb.log.
                media: dict[str, Any] = {
                    f"{stage}/confusion_matrix": plot,
                    f"{stage}/per_class": wandb.Table(columns=[*columns], data=rows),
                }
                logger.log_metrics(media, step=trainer.global_step)
            return
        out_dir = Path(trainer.log_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        title = f"{stage} confusion matrix (epoch {trainer.current_epoch})"
        confusion_matrix_figure(confusion_matrix(targets, preds, num_classes), names, title).savefig(
            out_dir / f"{stage}_confusion_matrix.png", dpi=100
        )
        with open(out_dir / f"{stage}_per_class.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([columns, *rows])


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts, rows the true class and columns the predicted one."""
    return torch.bincount(targets * num_classes + preds, minlength=num_classes**2).view(num_classes, num_classes)


def confusion_matrix_figure(matrix: torch.Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A ``[C, C]`` count matrix (rows: true class, columns: predicted) with counts written in the cells."""
    size = max(4.0, 0.45 * len(class_names) + 1.5)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix.numpy(), cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90 if max(map(len, class_names)) > 2 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(class_names) <= 20:  # beyond that the numbers are unreadable anyway
        threshold = matrix.max().item() / 2
        for (i, j), count in zip(matrix.nonzero().tolist(), matrix[matrix != 0].tolist(), strict=True):
            color = "white" if count > threshold else "black"
            ax.text(j, i, str(int(count)), ha="center", va="center", color=color, fontsize=7)
    return fig


def per_class_table(
    targets: torch.Tensor, preds: torch.Tensor, teacher_preds: torch.Tensor | None, class_names: list[str]
) -> tuple[list[str], list[list[Any]]]:
    """Rows of (class, support, student accuracy[, teacher accuracy, student − teacher])."""
    columns = ["class", "support", "student_acc"]
    if teacher_preds is not None:
        columns += ["teacher_acc", "student_minus_teacher"]
    rows = []
    for c, name in enumerate(class_names):
        mask = targets == c
        support = int(mask.sum())
        student_acc = _accuracy(preds[mask], c)
        row: list[Any] = [name, support, student_acc]
        if teacher_preds is not None:
            teacher_acc = _accuracy(teacher_preds[mask], c)
            row += [teacher_acc, round(student_acc - teacher_acc, 4)]
        rows.append(row)
    return columns, rows


def _accuracy(preds: torch.Tensor, label: int) -> float:
    return round((preds == label).float().mean().item(), 4) if len(preds) else float("nan")


def _class_names(trainer: L.Trainer, num_classes: int) -> list[str]:
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
    names = list(getattr(datamodule, "class_names", None) or []) if datamodule else []
    return names if len(names) == num_classes else [str(c) for c in range(num_classes)]
