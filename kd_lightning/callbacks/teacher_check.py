"""Before a student learns from a teacher, check that the teacher is what it claims to be."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.data.transforms import to_float_images
from kd_lightning.models.batchnorm import batch_statistics

log = logging.getLogger(__name__)

MONITORED_ACCURACY = "val/acc"


@torch.no_grad()
def accuracy(network: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = total = 0
    for x, y in batches:
        correct += int((network(x).argmax(dim=-1) == y).sum())
        total += len(y)
    return correct / total


class TeacherCheck(Callback):
    """At the start of distillation, measure the teacher on validation data; warn loudly if it looks broken.

    Logs (``teacher_check/...``, to every logger and the console) the teacher's eval-mode accuracy
    on up to ``max_batches`` validation batches, its accuracy with batch statistics in its
    BatchNorm layers (what correct running statistics would give), and the ``val/acc`` its
    checkpoint recorded. Warns when the eval-mode accuracy is

    * below chance (``1 / num_classes``) plus ``margin``: the teacher would teach noise;
    * more than ``drop_tolerance`` below the recorded accuracy: wrong weights, wrong input
      statistics, or another data set;
    * more than ``stale_bn_gap`` below its batch-statistics accuracy: stale BatchNorm running
      statistics (recompute them: the distiller's ``teacher_options.recalibrate_bn``, or train teachers
      with :class:`~kd_lightning.callbacks.PreciseBatchNorm`).

    Args:
        max_batches: validation batches to measure on (at the DataModule's eval batch size).
        margin: how far above chance the teacher must be.
        drop_tolerance: allowed drop below the checkpoint's recorded accuracy.
        stale_bn_gap: allowed gap between batch-statistics and eval-mode accuracy.
    """

    def __init__(
        self, max_batches: int = 20, margin: float = 0.1, drop_tolerance: float = 0.05, stale_bn_gap: float = 0.05
    ) -> None:
        self.max_batches = max_batches
        self.margin = margin
        self.drop_tolerance = drop_tolerance
        self.stale_bn_gap = stale_bn_gap
        self.result: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        val_set = getattr(datamodule, "val_set", None)
        if not isinstance(val_set, TensorImageDataset) or len(val_set) == 0:
            log.info("teacher check skipped: the DataModule holds no validation images in memory")
            return
        # The distiller's FrozenTeacher: its Classifier, and the scores its checkpoint recorded
        # (nn.Module attributes are untyped).
        frozen = cast(nn.Module, pl_module.teacher)
        teacher = cast(nn.Module, frozen.network)
        recorded_scores = cast(dict[str, float], frozen.recorded_scores)
        batches = self._batches(val_set, datamodule, pl_module.device)
        result = {"val_acc": accuracy(teacher, batches)}
        with batch_statistics(teacher):
            result["val_acc_batch_stats"] = accuracy(teacher, batches)
        recorded = recorded_scores.get(MONITORED_ACCURACY)
        if recorded is not None:
            result["recorded_val_acc"] = recorded
        self.result = result
        for logger in trainer.loggers:
            logger.log_metrics({f"teacher_check/{k}": v for k, v in result.items()}, step=trainer.global_step)
        images = sum(len(y) for _, y in batches)
        log.info(
            f"teacher check on {images} validation images: accuracy {result['val_acc']:.4f} in eval mode, "
            f"{result['val_acc_batch_stats']:.4f} with batch statistics"
            + (f", {recorded:.4f} recorded in its checkpoint" if recorded is not None else "")
        )
        for problem in self._problems(result, int(cast(int, pl_module.num_classes))):
            rank_zero_warn(f"TEACHER CHECK: {problem}")

    def _batches(self, val_set: TensorImageDataset, datamodule: Any, device: torch.device):
        size = datamodule.eval_batch_size
        count = min(len(val_set), self.max_batches * size)
        return [
            (
                to_float_images(val_set.images[i : i + size], datamodule.image_size).to(device),
                val_set.labels[i : i + size].to(device),
            )
            for i in range(0, count, size)
        ]

    def _problems(self, result: dict[str, float], num_classes: int) -> list[str]:
        acc = result["val_acc"]
        problems = []
        chance = 1.0 / num_classes
        if acc < chance + self.margin:
            problems.append(
                f"the teacher's validation accuracy is {acc:.4f}, within {self.margin} of chance ({chance:.4f}): "
                "the student would learn noise. Check teacher.weights_path and that it was trained on this data."
            )
        recorded = result.get("recorded_val_acc")
        if recorded is not None and acc < recorded - self.drop_tolerance:
            problems.append(
                f"the teacher's validation accuracy is {acc:.4f}, but its checkpoint recorded {recorded:.4f}: "
                "wrong weights, another input normalisation, or another data set?"
            )
        gap = result["val_acc_batch_stats"] - acc
        if gap > self.stale_bn_gap:
            problems.append(
                f"the teacher scores {acc:.4f} in eval mode but {result['val_acc_batch_stats']:.4f} with batch "
                "statistics: its BatchNorm running statistics are stale and every soft label it gives is off. "
                "Set model.teacher_options.recalibrate_bn (e.g. 64) or retrain the teacher with the PreciseBatchNorm "
                "callback."
            )
        return problems
