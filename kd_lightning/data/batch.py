"""``Batch``: what one batch carries, so a module reads it instead of guessing from shapes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from kd_lightning.outputs import IGNORE_LABEL, ModelOutputs


@dataclass
class Batch:
    """One batch from any kd_lightning data source.

    Sources fill what they have: in-memory and streaming data give ``images`` (``uint8`` until the
    DataModule's on-device hook turns them into float ``[0, 1]``), a teacher-output cache adds the
    stored ``teacher`` outputs for exactly those images, a feature cache gives ``features`` in
    place of images. Lightning moves every tensor field to the device.

    It also unpacks and indexes like the ``(x, y)`` tuple a plain LightningModule expects:
    ``x, y = batch``, ``batch[0]``, ``batch[1]``. ``x`` is what the network takes in: the images, or
    a feature-cache batch's ``features`` (the only input such a batch has). ``len(batch)`` is the
    batch size, as Lightning's logging reads it, not the length of that pair.

    Attributes:
        labels: ``[B]`` class indices; :data:`IGNORE_LABEL` marks an unlabeled sample.
        images: ``[B, C, H, W]`` images, or ``None`` when the batch carries ``features``.
        indices: ``[B]`` positions of the samples in the training set (CRD's memory, the caches).
        features: ``[B, D]`` pre-computed backbone features (a frozen backbone's feature cache).
        teacher: the teacher's outputs for ``images`` (or ``tokens``), when a cache computed them ahead of time.
        view: which fixed view of a teacher cache a streamed batch's ``images`` were decoded as, so
            the cache attaches the outputs of that view (decided where the images are decoded).
        tokens: ``[B, L]`` token ids of a text batch (in place of ``images``), padded with the
            pad id the text models declare; each model derives its attention mask from it.
    """

    labels: torch.Tensor
    images: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    features: torch.Tensor | None = None
    teacher: ModelOutputs | None = None
    view: int | None = None
    tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._pair())

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._pair()[index]

    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images if self.images is not None else self.features
        if x is None:
            raise ValueError("this batch carries neither images nor features to unpack as (x, y)")
        return x, self.labels

    @property
    def inputs(self) -> torch.Tensor:
        """What the network reads: the images or the token ids, refusing a batch that carries only features."""
        if self.images is not None:
            return self.images
        if self.tokens is not None:
            return self.tokens
        raise ValueError("this batch carries pre-computed features, not images or tokens")

    def labeled(self) -> torch.Tensor:
        """``[B]`` mask of the samples that have a label."""
        return self.labels != IGNORE_LABEL

    def with_images(self, images: torch.Tensor) -> Batch:
        return replace(self, images=images)

    def to(self, device: torch.device | str) -> Batch:
        """Every tensor on ``device``, as Lightning's default transfer does it, without its generic walk.

        Lightning's ``move_data_to_device`` deep-copies a dataclass field by field on every step, a
        fixed cost that a small CPU student's step notices; here it is one ``Tensor.to`` per field
        (a no-op when the tensor is there already).
        Copies to accelerators are non-blocking, as Lightning's (not to the CPU or MPS, as there).
        """
        device = torch.device(device)
        non_blocking = device.type not in ("cpu", "mps")

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        def optional(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else move(t)

        teacher = self.teacher
        if teacher is not None:
            teacher = ModelOutputs(move(teacher.logits), {name: move(t) for name, t in teacher.features.items()})
        images, indices, features = optional(self.images), optional(self.indices), optional(self.features)
        return Batch(move(self.labels), images, indices, features, teacher, self.view, optional(self.tokens))
