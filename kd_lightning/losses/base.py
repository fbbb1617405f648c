"""The interface every distillation loss module implements."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kd_lightning.outputs import ModelOutputs

__all__ = ["DistillationLoss", "ModelOutputs"]


class DistillationLoss(nn.Module):
    """A loss between student and teacher outputs; a thin module holding hyper-parameters.

    The math lives in a pure function next to each subclass so it can be tested on tensors
    alone. Feature losses list the layers they need in ``student_layers``/``teacher_layers``
    and may create trainable adapters in :meth:`build` once the tapped shapes are known.

    Attributes:
        student_layers: module names tapped on the student (see ``kd_lightning.models.feature_taps``).
        teacher_layers: module names tapped on the teacher, paired with ``student_layers``.
        needs_indices: the loss takes the dataset indices of the batch (``indices=`` keyword),
            e.g. to address a memory bank.
        needs_epoch: the loss takes the 0-based training epoch (``epoch=`` keyword), for
            schedules such as a warm-up. An argument rather than state set by a hook, since
            Lightning skips epoch-start hooks when a run resumes mid-epoch (mdistiller passes it too).
        needs_labels: the loss uses the class labels of every sample, so it cannot train on an
            unlabeled transfer set (the distiller refuses that combination up front).
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    needs_indices: bool = False
    needs_epoch: bool = False
    needs_labels: bool = False

    def set_layers(self, student_layers: Sequence[str], teacher_layers: Sequence[str]) -> None:
        """Record the tapped layer pairs; the i-th student layer is matched to the i-th teacher layer."""
        if len(student_layers) != len(teacher_layers) or not student_layers:
            raise ValueError(
                f"{type(self).__name__} pairs student and teacher layers one to one; got student_layers="
                f"{list(student_layers)} and teacher_layers={list(teacher_layers)}"
            )
        self.student_layers, self.teacher_layers = tuple(student_layers), tuple(teacher_layers)

    def feature_pairs(self, student: ModelOutputs, teacher: ModelOutputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The tapped ``(student, teacher)`` feature tensors, in layer order."""
        return [
            (student.features[s], teacher.features[t])
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        ]

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create shape-dependent parameters (adapters) from one probed batch; a no-op by default."""

    def bind_training_labels(self, labels: torch.Tensor) -> None:
        """Take what the loss needs from the training set's labels (in dataset-index order) before
        fitting, e.g. CRD's memory size and class-excluding negatives; a no-op by default."""

    def logit_temperature(self) -> float | None:
        """The temperature at which the loss softens the teacher's logits (KD, DKD, DIST); ``None``
        when it does not read them. A top-k teacher cache keeps the dropped classes' mass exact there."""
        return None

    def trains_alone(self, epoch: int) -> bool:
        """Whether this term is the whole objective at ``epoch`` (a pretraining stage, such as
        FitNets' hint stage); then no other term is optimised. Never, by default."""
        return False

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
