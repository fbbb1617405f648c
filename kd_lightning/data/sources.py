"""Batch sources: where a DataModule's training (or validation) batches come from.

A DataModule serves its own decoded images by default. A module that has computed something
ahead of time (a teacher's outputs, a frozen backbone's features) hands the DataModule a
:class:`BatchSource` through :meth:`ImageClassificationDataModule.use_source`; the DataModule then
builds its loader over that source and lets the source finish each batch on the device. Data
keeps flowing one way: DataModule → :class:`~kd_lightning.data.batch.Batch` → module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from kd_lightning.data.batch import Batch


class BatchSource(Dataset):
    """A dataset that hands out whole :class:`Batch` objects and completes them on the device.

    Attributes:
        rank_local: the source holds only this process's shard of the data (a cache computed
            per rank), so its loader must not be sharded again under DDP.
    """

    rank_local: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        raise NotImplementedError

    def finish(self, batch: Batch, epoch: int) -> Batch:
        """The batch as the module consumes it, on the device, for training epoch ``epoch``."""
        return batch


class FeatureSource(BatchSource):
    """Pre-computed ``[N, D]`` features and their labels; batches carry ``features`` and no images."""

    rank_local = True

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(self.labels[idx], features=self.features[idx])


class StreamedBatchSource(BatchSource):
    """A batch source over the streamed training samples: the DataModule streams them, the source finishes the batches.

    The DataModule then changes two things: every batch carries its sample indices, and the
    random crop drawn in the loader workers is that of one of the source's ``num_views`` fixed
    views, seeded by ``view_seed`` (instead of a fresh crop every epoch); the batch says which
    (:attr:`Batch.view`), so the source attaches what it computed for exactly that view. It is
    never indexed itself.
    """

    num_views: int = 1
    view_seed: int = 0
