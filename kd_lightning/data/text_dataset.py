"""Tokenized text kept in memory as integer tensors, batched with dynamic padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from kd_lightning.data.batch import Batch


class TokenizedTextDataset(Dataset):
    """Token ids of every text, stored once as one flat ``int32`` tensor plus offsets.

    Each text keeps only its own tokens, so a batch is padded to its longest member (dynamic
    padding), never to the data set's maximum: short questions cost short sequences. It answers
    the same calls as :class:`~kd_lightning.data.tensor_dataset.TensorImageDataset` (``labels``,
    ``subset``, ``with_labels``, ``return_indices``, whole-batch ``__getitems__``), so the
    image DataModule's split, few-label and loader logic serve it unchanged.

    Args:
        tokens: ``[T]`` the token ids of all texts, concatenated.
        offsets: ``[N + 1]`` where each text starts in ``tokens`` (the last entry is ``T``).
        labels: ``[N]`` class indices.
        pad_id: the id that fills a batch's shorter texts (the model masks it out).
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        offsets: torch.Tensor,
        labels: torch.Tensor,
        pad_id: int,
        return_indices: bool = False,
    ) -> None:
        if len(offsets) != len(labels) + 1:
            raise ValueError(f"{len(offsets) - 1} texts but {len(labels)} labels")
        self.tokens = tokens
        self.offsets = offsets.long()
        self.labels = labels.long()
        self.pad_id = pad_id
        self.return_indices = return_indices

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], labels: torch.Tensor, pad_id: int) -> TokenizedTextDataset:
        lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        tokens = torch.tensor([t for x in ids for t in x], dtype=torch.int32)
        return cls(tokens, offsets, labels, pad_id)

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def ids(self, index: int) -> torch.Tensor:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]].long()

    def pad(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` int64 ids of the texts ``indices``, padded with ``pad_id`` to the longest of them."""
        starts, lengths = self.offsets[indices], self.lengths()[indices]
        width = int(lengths.max()) if len(indices) else 0
        position = torch.arange(width)
        inside = position < lengths[:, None]
        gather = (starts[:, None] + position).clamp(max=max(len(self.tokens) - 1, 0))
        return torch.where(inside, self.tokens[gather].long(), self.pad_id)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.return_indices:
            return self.ids(index), self.labels[index], torch.tensor(index)
        return self.ids(index), self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(
            self.labels.index_select(0, idx),
            indices=idx if self.return_indices else None,
            tokens=self.pad(idx),
        )

    def subset(self, indices: torch.Tensor) -> TokenizedTextDataset:
        ids = [self.ids(int(i)).tolist() for i in indices]
        return TokenizedTextDataset.from_lists(ids, self.labels[indices], self.pad_id)

    def with_labels(self, labels: torch.Tensor) -> TokenizedTextDataset:
        """The same texts under other labels (e.g. some replaced by ``IGNORE_LABEL``)."""
        return TokenizedTextDataset(self.tokens, self.offsets, labels, self.pad_id, self.return_indices)
