"""Top-k accuracy cheap enough to update in every training step."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from kd_lightning.data.batch import IGNORE_LABEL


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """How many labeled samples have their label among the ``k`` highest logits, and how many are labeled.

    Samples labeled :data:`~kd_lightning.data.batch.IGNORE_LABEL` (unlabeled) count in neither.

    Args:
        logits: ``[B, C]`` scores.
        targets: ``[B]`` class indices.
        k: how many of the highest scores may hold the label.

    Returns:
        Two scalar integer tensors: hits, labeled samples.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected [B, C] logits and [B] targets, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    # Class indices are >= 0, so an unlabeled target (IGNORE_LABEL < 0) matches none, and the k
    # distinct indices of a row match its label at most once: counting matches counts hits.
    # Top-1 is the argmax, as in torchmetrics' accuracy (the same choice on ties), and cheaper than topk.
    top = logits.argmax(dim=-1, keepdim=True) if k == 1 else logits.topk(k, dim=-1).indices
    return (top == targets[:, None]).sum(), (targets != IGNORE_LABEL).sum()


class TopKAccuracy(Metric):
    """Micro top-k accuracy over every labeled sample seen (:func:`topk_hits`).

    The training-time twin of ``MulticlassAccuracy(average="micro", top_k=k)``: the same number,
    from one ``topk`` and two sums per update instead of torchmetrics' general statistics path,
    whose cost a small student's step notices. States are sums, reduced by summing across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    hits: torch.Tensor
    labeled: torch.Tensor

    def __init__(self, k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.add_state("hits", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("labeled", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        hits, labeled = topk_hits(logits, targets, self.k)
        # In place: ``self.hits += hits`` would also re-assign the attribute through nn.Module's
        # ``__setattr__``, a Python cost per state and step larger than the additions.
        self.hits.add_(hits)
        self.labeled.add_(labeled)

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.labeled.clamp(min=1)
