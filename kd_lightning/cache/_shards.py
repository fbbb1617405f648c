"""Which samples a DDP rank caches."""

from __future__ import annotations

import math

import torch


def rank_shard(n: int, rank: int, world_size: int) -> torch.Tensor:
    """The sample indices rank ``rank`` owns: ``rank::world_size``, padded like ``DistributedSampler``.

    A cache entry is computed once for a fixed shard, so the shard cannot reshuffle across
    ranks every epoch as ``DistributedSampler`` would; padding keeps every rank at the same
    number of batches, without which DDP would hang on the last collective.
    """
    total = math.ceil(n / world_size) * world_size
    order = torch.arange(total) % n
    return order[rank:total:world_size]
