"""``StepContext``: what a training step knows about its batch besides the networks' outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kd_lightning.outputs import IGNORE_LABEL


@dataclass(frozen=True)
class StepContext:
    """The batch's labels, dataset indices and the epoch, handed to every loss in one call shape.

    Every loss receives the same context and reads what it needs, so a new method never changes
    how the distiller calls its terms.

    Attributes:
        labels: ``[B]`` class indices; :data:`~kd_lightning.outputs.IGNORE_LABEL` marks a sample
            without one (an unlabeled transfer-set image).
        indices: ``[B]`` positions of the samples in the training set, or ``None`` when the
            DataModule does not hand them out (``return_indices: false``).
        epoch: the 0-based training epoch. An argument rather than state a hook sets, since
            Lightning skips epoch-start hooks when a run resumes mid-epoch.
        token_mask: ``[B, L]`` 1 at the real tokens of a text batch, 0 at its padding, so a loss
            over per-token features averages over real tokens only; ``None`` for images.
    """

    labels: torch.Tensor
    indices: torch.Tensor | None = None
    epoch: int = 0
    token_mask: torch.Tensor | None = None

    @property
    def labeled(self) -> torch.Tensor:
        """``[B]`` mask of the samples that have a label."""
        return self.labels != IGNORE_LABEL

    def dataset_indices(self, loss: str) -> torch.Tensor:
        """The samples' dataset indices, for ``loss`` that addresses a per-sample memory by them.

        Raises:
            ValueError: the batch carries no indices.
        """
        if self.indices is None:
            raise ValueError(
                f"{loss} needs the dataset index of each training sample: set `return_indices: true` on the DataModule"
            )
        return self.indices
