"""``Batch``: what one batch carries, so a module reads it instead of guessing from shapes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kd_lightning.outputs import ModelOutputs

# The label of a sample without one (an unlabeled transfer-set image): ``F.cross_entropy``'s
# default ``ignore_index``, so label losses skip it and distillation terms still see it.
IGNORE_LABEL = -100


@dataclass
class Batch:
    """One batch from any kd_lightning data source.

    Sources fill what they have: in-memory and streaming data give ``images`` (``uint8`` until the
    DataModule's on-device hook turns them into float ``[0, 1]``), a teacher-output cache adds the
    stored ``teacher`` outputs for exactly those images, a feature cache gives ``features`` in
    place of images. Lightning moves every tensor field to the device.

    Attributes:
        labels: ``[B]`` class indices; :data:`IGNORE_LABEL` marks an unlabeled sample.
        images: ``[B, C, H, W]`` images, or ``None`` when the batch carries ``features``.
        indices: ``[B]`` positions of the samples in the training set (CRD's memory, the caches).
        features: ``[B, D]`` pre-computed backbone features (a frozen backbone's feature cache).
        teacher: the teacher's outputs for ``images``, when a cache computed them ahead of time.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    features: torch.Tensor | None = None
    teacher: ModelOutputs | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> torch.Tensor:
        """The images, refusing a batch that carries only features (a module that needs images got a cache's)."""
        if self.images is None:
            raise ValueError("this batch carries pre-computed features, not images")
        return self.images

    def labeled(self) -> torch.Tensor:
        """``[B]`` mask of the samples that have a label."""
        return self.labels != IGNORE_LABEL

    def with_images(self, images: torch.Tensor) -> Batch:
        return replace(self, images=images)
