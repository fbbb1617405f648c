"""An in-memory image dataset that hands out whole batches by fancy indexing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Decoded ``uint8`` images ``[N, C, H, W]`` with integer labels, kept in memory.

    ``__getitems__`` lets the DataLoader fetch a batch with one indexing operation instead of
    ``batch_size`` Python calls and a collate; it still is a plain ``DataLoader`` underneath,
    so Lightning can swap in a ``DistributedSampler`` under DDP.

    With ``return_indices`` set, items are ``(image, label, index)``: losses that keep a memory
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.return_indices:
            return self.images[index], self.labels[index], torch.tensor(index)
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.return_indices:
            return self.images[idx], self.labels[idx], idx
        return self.images[idx], self.labels[idx]

    def subset(self, indices: torch.Tensor) -> TensorImageDataset:
        return TensorImageDataset(self.images[indices], self.labels[indices])


class PreparedBatch(tuple):
    """A batch already in its final form (e.g. from a cache): the DataModule's batch hook leaves it alone."""


def collate_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Identity collate: ``__getitems__`` already returns a stacked batch."""
    return batch
