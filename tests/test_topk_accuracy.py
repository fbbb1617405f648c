"""The light training accuracy equals torchmetrics' micro accuracy, unlabeled samples left out."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from kd_lightning.data.batch import IGNORE_LABEL
from kd_lightning.metrics import TopKAccuracy, topk_hits


def test_topk_hits_by_hand() -> None:
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    targets = torch.tensor([1, 1, 0, IGNORE_LABEL])
    assert [int(t) for t in topk_hits(logits, targets, 1)] == [1, 3]  # only sample 0; sample 3 is unlabeled
    assert [int(t) for t in topk_hits(logits, targets, 2)] == [2, 3]  # sample 1's label is second
    with pytest.raises(ValueError, match=r"\[B, C\] logits"):
        topk_hits(logits, targets[:2])


@pytest.mark.parametrize("k", [1, 5])
def test_matches_torchmetrics_micro_accuracy_over_several_updates(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    ours = TopKAccuracy(k)
    reference = MulticlassAccuracy(10, top_k=k, average="micro", ignore_index=IGNORE_LABEL)
    for _ in range(4):
        logits = torch.randn(64, 10, generator=generator)
        targets = torch.randint(0, 10, (64,), generator=generator)
        targets[torch.rand(64, generator=generator) < 0.2] = IGNORE_LABEL
        ours.update(logits, targets)
        reference.update(logits, targets)
    torch.testing.assert_close(ours.compute(), reference.compute())
    ours.reset()
    assert ours.compute() == 0.0  # nothing labeled seen: 0, not NaN
