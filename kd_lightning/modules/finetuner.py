"""Transfer learning: a pretrained backbone with a new head, frozen or unfrozen on a schedule."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from kd_lightning.cache.feature_cache import FeatureCache
from kd_lightning.cache.store import CacheStore
from kd_lightning.callbacks.unfreeze import BackboneUnfreeze
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.errors import ConfigError
from kd_lightning.models.freezing import freeze, keep_frozen_in_eval
from kd_lightning.models.spec import ModelSpec, as_spec
from kd_lightning.modules.base import SupervisedModule

Strategy = Literal["linear_probe", "full", "freeze_then_unfreeze"]


class FrozenBackboneFinetuner(SupervisedModule):
    """Fine-tune a (pretrained) network's backbone with a new linear head.

    Strategies:
        ``linear_probe``: the backbone never trains; its BatchNorm stays in eval mode, so its
        running statistics never change. ``full``: everything trains (with no pretrained
        weights this is plain supervised training, e.g. of a teacher). ``freeze_then_unfreeze``:
        frozen until ``unfreeze_at_epoch``, then trained in its own param group at
        ``backbone_lr_factor`` × the head's learning rate (a :class:`BackboneUnfreeze` callback).

    Args:
        network: the network to fine-tune and its weights (registry name, ``pretrained``,
            ``weights_path``); its backbone is what the strategy freezes, its head is new.
        num_classes: classes of the new head.
        strategy: one of the strategies above.
        unfreeze_at_epoch: epoch at which ``freeze_then_unfreeze`` unfreezes.
        backbone_lr_factor: backbone/head learning-rate ratio after the unfreeze.
        feature_cache: with ``linear_probe``, compute the backbone features of the train and
            val sets once, when ``fit`` sets up, and train the head on them (``True``/``"memory"``:
            kept in memory; ``"disk"``: memory-mapped files under ``feature_cache_dir``). Skipped, with a
            logged reason, when the DataModule augments randomly. See :class:`FeatureCache`.
        feature_cache_dir: directory of the ``"disk"`` feature cache (named apart from the streaming
            DataModules' ``cache_dir``, since a logger merges both hyper-parameter sets).
        optimizer, lr_scheduler, label_smoothing, channels_last, compile: see :class:`SupervisedModule`.
    """

    def __init__(
        self,
        network: ModelSpec,
        num_classes: int,
        strategy: Strategy = "linear_probe",
        unfreeze_at_epoch: int = 1,
        backbone_lr_factor: float = 0.1,
        feature_cache: bool | Literal["memory", "disk"] = False,
        feature_cache_dir: str = ".kd_cache/features",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(num_classes, optimizer, lr_scheduler, label_smoothing, channels_last, compile)
        if strategy not in ("linear_probe", "full", "freeze_then_unfreeze"):
            raise ValueError(f"unknown strategy {strategy!r}; use linear_probe, full or freeze_then_unfreeze")
        spec = as_spec(network)
        network = spec.to_dict()  # type: ignore[assignment]  # plain types in the hyper-parameters (see DistillationModule)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.strategy = strategy
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.backbone_lr_factor = backbone_lr_factor
        self.network = spec.build(num_classes)
        if strategy == "linear_probe":
            freeze(self.network.backbone)
        if feature_cache and strategy != "linear_probe":
            raise ValueError(f"feature_cache needs strategy='linear_probe' (a frozen backbone), got {strategy!r}")
        self.feature_cache: FeatureCache | None = None
        if feature_cache:
            storage: Literal["memory", "disk"] = "memory" if feature_cache is True else feature_cache
            self.feature_cache = FeatureCache(CacheStore(storage, feature_cache_dir, setting="feature_cache_dir"))

    def configure_callbacks(self) -> list[Callback]:
        callbacks = super().configure_callbacks()
        if self.strategy == "freeze_then_unfreeze":
            callbacks.append(BackboneUnfreeze(self.unfreeze_at_epoch, self.backbone_lr_factor))
        return callbacks

    def prepare_training_data(self, datamodule: ImageClassificationDataModule) -> None:
        """Refuse unlabeled data; serve cached features through the DataModule."""
        if datamodule.has_unlabeled:
            raise ConfigError(
                "FrozenBackboneFinetuner needs a label for every training image, but the DataModule hands out "
                "unlabeled images (unlabeled: rest): set unlabeled: null, or distil with DistillationModule"
            )
        if self.feature_cache is not None:
            for split, source in self.feature_cache.sources(self.trainer, self.network).items():
                datamodule.use_source(split, source)

    def logits(self, batch: Batch) -> torch.Tensor:
        """Logits of the batch's images, or of its cached backbone features through the head alone."""
        if batch.features is not None:
            return self.network.head(batch.features)
        return self(batch.inputs)

    def train(self, mode: bool = True) -> FrozenBackboneFinetuner:
        super().train(mode)
        keep_frozen_in_eval(self.network.backbone)
        return self

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self.logits(batch)
        loss = self.cross_entropy(logits, batch.labels)
        self.train_metrics.update(logits, batch.labels)
        self.log_step_values(loss, {}, len(batch))
        return loss
