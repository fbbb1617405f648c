"""What the finetuner and the distiller share: metrics, evaluation steps and optimizers."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection

from kd_lightning.callbacks.nonfinite import NonFiniteLossGuard
from kd_lightning.callbacks.resume import ExactResume
from kd_lightning.checkpointing import use_safe_checkpoint_io
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import IGNORE_LABEL, Batch
from kd_lightning.metrics import classification_metrics
from kd_lightning.models.classifier import Classifier
from kd_lightning.models.weights import CLASS_NAMES_KEY


class SupervisedModule(L.LightningModule):
    """Base LightningModule: one trainable classifier (``self.network``), its metrics and optimizer.

    Args:
        num_classes: classes of the task (linked from the DataModule by the CLI).
        optimizer: optimizer factory over the trainable parameters (``class_path`` in YAML).
        lr_scheduler: optional scheduler factory; ``ReduceLROnPlateau`` monitors ``val/loss``.
        label_smoothing: label smoothing of the cross-entropy term.
        channels_last: store conv weights (and hence activations) channels-last, the faster
            layout for convolutions on recent GPUs (tensor cores) and on oneDNN CPUs.
        compile: ``torch.compile`` the networks in place (``nn.Module.compile``, so checkpoint
            keys are unchanged); pays a one-off compilation at the first step.
    """

    network: Classifier

    def __init__(
        self,
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        self.compile_networks = compile
        self.train_metrics = classification_metrics(num_classes, evaluation=False).clone(prefix="train/")
        # In checkpoints, so an epoch's training accuracy survives a mid-epoch resume.
        self.train_metrics.persistent(True)
        self.step_values: dict[str, torch.Tensor] = {}
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")

    def setup(self, stage: str) -> None:
        # Runs before Lightning restores --ckpt_path and before any save, also outside the CLI.
        use_safe_checkpoint_io(self.trainer)
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        if stage == "fit" and isinstance(datamodule, ImageClassificationDataModule):
            self.prepare_training_data(datamodule)

    def prepare_training_data(self, datamodule: ImageClassificationDataModule) -> None:
        """Check the training data against the module and hand the DataModule any batch source (a cache).

        Called once per ``fit``, after the DataModule's ``setup``; the sources are withdrawn at teardown.
        """

    def teardown(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None  # type: ignore[attr-defined]
        if stage == "fit" and isinstance(datamodule, ImageClassificationDataModule):
            datamodule.clear_sources()

    def configure_callbacks(self) -> list[Callback]:
        """Exact resume (RNG states, config check) and a stop on non-finite losses, in every run.

        One the Trainer already has (e.g. a ``NonFiniteLossGuard`` with its own check interval)
        is kept: Lightning would otherwise replace it with the module's default.
        """
        present = self._trainer.callbacks if self._trainer is not None else []  # type: ignore[attr-defined]  # set by Lightning at run time
        defaults = (ExactResume, NonFiniteLossGuard)
        return [cls() for cls in defaults if not any(isinstance(cb, cls) for cb in present)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def networks_to_compile(self) -> list[nn.Module]:
        """The networks ``compile=True`` compiles (the distiller adds its teacher)."""
        return [self.network]

    def configure_model(self) -> None:
        """Apply the fast-path options once, before the optimizer sees the parameters."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_networks:
            for network in self.networks_to_compile():
                if getattr(network, "_compiled_call_impl", None) is None:
                    network.compile()

    def log_step_values(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log ``train/loss`` and ``train/<term>`` of this step, on the steps where they are read.

        Each ``self.log`` call costs Lightning a walk over its result entry, a fixed cost per key
        that a small student's step notices. Per-step values reach the
        loggers only every ``log_every_n_steps`` steps, and epoch-end monitors read the last
        step's; so the values are logged on those steps and on each epoch's last step (the same
        keys, steps and values the loggers and monitors got from logging every step), and
        ``train/loss`` also on every step while a progress bar shows it. In between,
        ``trainer.callback_metrics`` holds the last logged values; :attr:`step_values` always
        holds this step's (detached), for callbacks that need them every step.
        """
        self.step_values = {"train/loss": loss.detach()} | {f"train/{k}": v.detach() for k, v in terms.items()}
        trainer = self._trainer
        read = trainer is None or _step_values_read(trainer)
        bar = trainer.progress_bar_callback if trainer is not None else None
        if read or (bar is not None and bar.is_enabled):  # type: ignore[attr-defined]  # every Lightning bar has it
            self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if read and terms:
            self.log_dict({f"train/{name}": value for name, value in terms.items()}, batch_size=batch_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the data's class order, so a student distilled from this checkpoint can check that class k
        means the same to both; store the epoch's training-metric state summed over ranks: under DDP each
        rank holds its own batches only, and the checkpoint is written from rank 0 (every rank takes part)."""
        class_names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
        if class_names:
            checkpoint[CLASS_NAMES_KEY] = [str(name) for name in class_names]
        if self.trainer.world_size > 1:
            with ExitStack() as synced:
                for metric in self.train_metrics.values():
                    synced.enter_context(metric.sync_context(should_sync=True))
                checkpoint["state_dict"].update(self.train_metrics.state_dict(prefix="train_metrics."))

    def on_train_start(self) -> None:
        # A resumed DDP run restores the summed state on every rank; rank 0 alone keeps it, so the
        # epoch-end sum over ranks counts each batch once. On a fresh run the state is empty anyway.
        if self.trainer.global_rank > 0:
            self.train_metrics.reset()

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training metrics, accumulated by ``train_metrics.update`` in every step.

        Logged once here rather than by passing the metric objects to ``self.log`` in every step:
        each ``self.log`` call costs Lightning a walk over its result entry (about as much as the
        whole KD loss of a small student), and for epoch-level values every call but the last is
        wasted. Keys and values are the same (``train/acc``, ... at the end of each epoch).
        """
        if any(metric.update_called for metric in self.train_metrics.values()):
            self.log_dict(self.train_metrics.compute(), sync_dist=True)
        self.train_metrics.reset()

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labeled samples; unlabeled ones (``IGNORE_LABEL``) add nothing.

        Summed and divided by the labeled count (at least 1), so a batch of only unlabeled
        samples contributes 0 instead of ``F.cross_entropy``'s NaN (0/0).
        """
        total = F.cross_entropy(
            logits.float(), targets, ignore_index=IGNORE_LABEL, label_smoothing=self.label_smoothing, reduction="sum"
        )
        return total / (targets != IGNORE_LABEL).sum().clamp(min=1)

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The logits (and a distiller's teacher logits), for callbacks such as the confusion matrix."""
        return self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(batch, "test", self.test_metrics)

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Class probabilities of the trained network."""
        return self(batch.inputs).softmax(dim=-1)

    def logits(self, batch: Batch) -> torch.Tensor:
        """The trained network's logits for a batch (the finetuner reads cached features here)."""
        return self(batch.inputs)

    def _evaluate(self, batch: Batch, stage: str, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        logits = self.logits(batch)
        self.log(f"{stage}/loss", self.cross_entropy(logits, batch.labels), sync_dist=True, batch_size=len(batch))
        metrics.update(logits, batch.labels)
        self.log_dict(metrics)
        return {"logits": logits}

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}


def _step_values_read(trainer: L.Trainer) -> bool:
    """Whether a value logged in this training step reaches a logger or an epoch-end monitor.

    The run's last step counts too (``max_steps`` may stop it mid-epoch): its values are what
    ``trainer.callback_metrics`` holds after ``fit``.
    """
    last_step = 0 < trainer.max_steps <= trainer.global_step + 1
    # Lightning's own test for "the loggers are written after this step" (every log_every_n_steps).
    # Private, but Lightning has no public equivalent: its own LearningRateMonitor, DeviceStatsMonitor
    # and ThroughputMonitor read this same property. Re-deriving it from public attributes
    # (global_step % log_every_n_steps) would differ from what the loggers get with several
    # optimizers or manual optimization, and drift whenever Lightning changes its rule; if the
    # property goes, tests/test_training_metrics.py (CSV log identical to logging every step) fails.
    return bool(
        trainer.fast_dev_run  # type: ignore[attr-defined]  # set by Lightning at run time
        or trainer._logger_connector.should_update_logs
        or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        or last_step
    )
