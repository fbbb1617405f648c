"""FixMatch (Sohn et al., NeurIPS 2020): a student that learns from few labels and many unlabeled images
without a teacher.

Each step takes a batch of labelled images (cross-entropy on a weak view) and ``μ`` times as many
unlabeled ones: the network's prediction on a weak view of an unlabeled image becomes a hard
pseudo-label, and the network is trained to predict it from a strong view of the same image, but
only where the weak-view prediction is confident (max probability ≥ ``threshold``). Both views are
made on the device from the DataModule's batches (:func:`~kd_lightning.data.transforms.weak_augment`,
:func:`~kd_lightning.data.transforms.strong_augment`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import IGNORE_LABEL, Batch
from kd_lightning.data.transforms import strong_augment, to_float_images, weak_augment
from kd_lightning.errors import ConfigError
from kd_lightning.models.spec import ModelSpec, as_spec
from kd_lightning.modules.base import SupervisedModule


def confident_pseudo_labels(weak_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The argmax class of each weak-view prediction and whether its probability reaches ``threshold``."""
    confidence, labels = weak_logits.detach().float().softmax(dim=-1).max(dim=-1)
    return labels, confidence >= threshold


def fixmatch_unlabeled_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled term and its mask: cross-entropy of the strong view against the weak view's
    confident hard pseudo-labels, averaged over *all* unlabeled samples (unconfident ones add 0), as in
    the paper, so the term grows as the model grows confident. No gradient flows through the weak view."""
    labels, mask = confident_pseudo_labels(weak_logits, threshold)
    per_sample = F.cross_entropy(strong_logits.float(), labels, reduction="none")
    return (per_sample * mask).mean(), mask


class FixMatchModule(SupervisedModule):
    """Semi-supervised training of one network with FixMatch on a DataModule with ``unlabeled: rest``.

    The DataModule's training batches are the unlabeled stream (every training image, labelled or not:
    their labels are not read there); its ``batch_size`` is FixMatch's ``μ·B``. The labelled images
    (those whose label is not ``IGNORE_LABEL``) are kept on the module's device and ``labeled_batch_size`` (B) of
    them are drawn, with replacement, at every step. Set the DataModule's own augmentation off
    (``crop_padding: 0``, ``hflip: false``): the module makes its views itself.

    Args:
        student: the network and its weights.
        num_classes: classes of the task (linked from the DataModule by the CLI).
        threshold: confidence a weak-view prediction needs to become a pseudo-label (paper: 0.95).
        unlabeled_weight: λ_u, the weight of the unlabeled term (paper: 1).
        labeled_batch_size: B, labelled images per step.
        strong_ops: RandAugment ops per strong view (paper: 2).
        optimizer, lr_scheduler, label_smoothing, channels_last, compile: see :class:`SupervisedModule`.
    """

    def __init__(
        self,
        student: ModelSpec,
        num_classes: int,
        threshold: float = 0.95,
        unlabeled_weight: float = 1.0,
        labeled_batch_size: int = 64,
        strong_ops: int = 2,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(num_classes, optimizer, lr_scheduler, label_smoothing, channels_last, compile)
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"model.threshold must be in [0, 1], got {threshold}")
        if labeled_batch_size < 1:
            raise ConfigError(f"model.labeled_batch_size must be >= 1, got {labeled_batch_size}")
        spec = as_spec(student)
        student = spec.to_dict()  # type: ignore[assignment]  # plain types in the hyper-parameters
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.threshold = threshold
        self.unlabeled_weight = unlabeled_weight
        self.labeled_batch_size = labeled_batch_size
        self.strong_ops = strong_ops
        self.network = spec.build(num_classes)
        self.labeled_images: torch.Tensor | None = None
        self.labeled_targets: torch.Tensor | None = None
        self.image_size: int | None = None

    def prepare_training_data(self, datamodule: ImageClassificationDataModule) -> None:
        """Keep the labelled training images; refuse data without an unlabeled rest or with augmentation."""
        if not datamodule.has_unlabeled or datamodule.train_set is None:
            raise ConfigError(
                "FixMatchModule needs labelled and unlabeled training images: set data.samples_per_class and "
                "data.unlabeled: rest"
            )
        if datamodule.crop_padding > 0 or datamodule.hflip:
            raise ConfigError(
                "FixMatchModule makes its own weak and strong views: set data.crop_padding: 0 and data.hflip: false"
            )
        labeled = datamodule.train_set.labels != IGNORE_LABEL
        if not labeled.any():
            raise ConfigError("FixMatchModule found no labelled training image: set data.samples_per_class")
        self.labeled_images = datamodule.train_set.images[labeled]
        self.labeled_targets = datamodule.train_set.labels[labeled]
        self.image_size = datamodule.image_size

    def labeled_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``labeled_batch_size`` labelled images (float, not augmented yet) and their labels, with replacement."""
        if self.labeled_images is None or self.labeled_targets is None:
            raise RuntimeError("FixMatchModule trains only inside fit (prepare_training_data keeps the labels)")
        if self.labeled_images.device != self.device:  # setup runs before Lightning moves the module
            self.labeled_images = self.labeled_images.to(self.device)
            self.labeled_targets = self.labeled_targets.to(self.device)
        index = torch.randint(len(self.labeled_targets), (self.labeled_batch_size,), device=self.labeled_targets.device)
        return to_float_images(self.labeled_images[index], self.image_size), self.labeled_targets[index]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = self.labeled_batch()
        unlabeled = batch.inputs
        views = torch.cat([weak_augment(images), weak_augment(unlabeled), strong_augment(unlabeled, self.strong_ops)])
        logits = self(views)
        labeled_logits = logits[: len(images)]
        weak_logits, strong_logits = logits[len(images) :].chunk(2)
        supervised = self.cross_entropy(labeled_logits, targets)
        consistency, mask = fixmatch_unlabeled_loss(weak_logits, strong_logits, self.threshold)
        loss = supervised + self.unlabeled_weight * consistency
        self.train_metrics.update(labeled_logits, targets)
        terms = {"supervised": supervised.detach(), "unlabeled": consistency.detach(), "mask_rate": mask.float().mean()}
        self.log_step_values(loss, terms, len(batch))
        return loss


__all__ = ["FixMatchModule", "confident_pseudo_labels", "fixmatch_unlabeled_loss"]
