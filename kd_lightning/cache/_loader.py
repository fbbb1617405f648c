"""Loaders over cached tensors, one shard per DDP rank."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kd_lightning.data.tensor_dataset import PreparedBatch


def rank_shard(n: int, rank: int, world_size: int) -> torch.Tensor:
    """The sample indices rank ``rank`` owns: ``rank::world_size``, padded like ``DistributedSampler``.

    A cache entry is computed once for a fixed shard, so the shard cannot reshuffle across
    ranks every epoch as ``DistributedSampler`` would; padding keeps every rank at the same
    number of batches, without which DDP would hang on the last collective.
    """
    total = math.ceil(n / world_size) * world_size
    order = torch.arange(total) % n
    return order[rank:total:world_size]


class TensorTupleDataset(Dataset):
    """Equal-length tensors indexed together; ``__getitems__`` fetches a batch in one operation."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if len({len(t) for t in tensors}) != 1:
            raise ValueError(f"tensors differ in length: {[len(t) for t in tensors]}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> PreparedBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return PreparedBatch(t[idx] for t in self.tensors)


def shard_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A loader over this rank's own shard.

    Its sampler is a one-replica ``DistributedSampler``: Lightning leaves a ``DistributedSampler``
    in place under DDP (instead of re-sharding the already-sharded data) and calls its
    ``set_epoch``, so the shard is still reshuffled every epoch.
    """
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_identity)


def _identity(batch):
    return batch
