"""A shuffling sampler whose position can be saved and restored mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler, Sampler


class ResumableRandomSampler(Sampler[int]):
    """A fresh permutation per epoch, drawn from ``seed + epoch`` alone; can skip what was consumed.

    ``RandomSampler`` draws its order from the global RNG and restarts from the first sample
    when a run resumes, so a resumed run sees other batches than an uninterrupted one. Here the
    order depends only on ``(seed, epoch)``, and :meth:`load_state_dict` sets how many samples of
    the epoch were already consumed; the next iteration skips them, once. Lightning calls
    :meth:`set_epoch` before each epoch.

    Args:
        num_samples: size of the data set.
        seed: base seed of the per-epoch permutations.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self._skip = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0  # a new epoch starts from its first sample
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        start, self._skip = self._skip, 0
        yield from order[start:].tolist()

    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "consumed": consumed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_samples"] != self.num_samples:
            raise ValueError(
                f"the checkpoint's training set had {state['num_samples']} images, this one has {self.num_samples}"
            )
        self.seed, self.epoch, self._skip = state["seed"], state["epoch"], state["consumed"]


class ResumableShardSampler(DistributedSampler):
    """:class:`ResumableRandomSampler`'s order over data that is already this rank's shard.

    A cache computed per rank must not be split again under DDP. Lightning leaves a
    ``DistributedSampler`` in place instead of wrapping it, so this one-replica
    ``DistributedSampler`` keeps each rank on its own shard while resuming exactly mid-epoch.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        super().__init__(range(num_samples), num_replicas=1, rank=0, shuffle=True, seed=seed)
        self.order = ResumableRandomSampler(num_samples, seed)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.order.set_epoch(epoch)

    def state_dict(self, consumed: int = 0) -> dict[str, Any]:
        return self.order.state_dict(consumed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)
