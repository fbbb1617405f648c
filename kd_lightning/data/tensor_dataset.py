"""An in-memory image dataset that hands out whole batches by fancy indexing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from kd_lightning.data.batch import Batch


class TensorImageDataset(Dataset):
    """Decoded ``uint8`` images ``[N, C, H, W]`` with integer labels, kept in memory.

    ``__getitems__`` lets the DataLoader fetch a :class:`~kd_lightning.data.batch.Batch` with one
    indexing operation instead of ``batch_size`` Python calls and a collate; it still is a plain
    ``DataLoader`` underneath, so Lightning can swap in a ``DistributedSampler`` under DDP.

    With ``return_indices`` set, batches carry the samples' ``indices``: losses that keep a memory
    per training sample (CRD) need to know which samples a batch holds.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, return_indices: bool = False) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.return_indices = return_indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        # index_select, not ``images[idx]``: the same rows, but advanced indexing of a 4-d tensor
        # takes a much slower general path on the CPU.
        return Batch(
            self.labels.index_select(0, idx),
            images=self.images.index_select(0, idx),
            indices=idx if self.return_indices else None,
        )

    def subset(self, indices: torch.Tensor) -> TensorImageDataset:
        return TensorImageDataset(self.images[indices], self.labels[indices])

    def with_labels(self, labels: torch.Tensor) -> TensorImageDataset:
        """The same images under other labels (e.g. some replaced by ``IGNORE_LABEL``)."""
        return TensorImageDataset(self.images, labels, self.return_indices)


def collate_batch(batch: Batch) -> Batch:
    """Identity collate: ``__getitems__`` already returns a whole batch."""
    return batch
