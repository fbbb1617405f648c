"""The interface every distillation loss module implements, and the base of the logit losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kd_lightning.losses._utils import check_temperature
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

__all__ = ["DistillationLoss", "LogitLoss", "ModelOutputs", "StepContext"]


class DistillationLoss(nn.Module):
    """A loss between student and teacher outputs; a thin module holding hyper-parameters.

    Every loss is called the same way, ``loss(student, teacher, context)``, and reads what it
    needs: the outputs' ``logits`` and tapped ``features``, the context's ``labels`` (with its
    ``labeled`` mask), ``indices`` and ``epoch`` (see :class:`StepContext`). A new method is one file:

    1. a pure function of tensors holding the math, tested against hand-computed values and by
       ``gradcheck``; it keeps float32 under autocast with ``_utils.autocast_off`` and
       ``_utils.full_precision`` where half precision would change the result;
    2. a module registered with ``@register_loss("name")`` whose constructor takes the
       hyper-parameters (they come from a config's ``kwargs``) and whose :meth:`forward` calls the
       function. A loss on logits softened at a temperature subclasses :class:`LogitLoss`; a loss on
       features calls :meth:`set_layers` and may build adapters in :meth:`build`.

    Example::

        @register_loss("logit_mse")
        class LogitMSE(DistillationLoss):
            def forward(self, student, teacher, context):
                return F.mse_loss(student.logits, teacher.logits)

    Attributes:
        student_layers: module names tapped on the student (see ``kd_lightning.models.feature_taps``).
        teacher_layers: module names tapped on the teacher, paired with ``student_layers``.
        needs_labels: the loss uses the class label of every sample, so it cannot train on an
            unlabeled transfer set (the distiller refuses that combination up front).
    """

    # Whether a top-k teacher cache (the other classes sharing their mass at the logit terms' one
    # temperature) serves this loss as the full logits would, up to that approximation: not for a loss
    # that softens the teacher at a learnt or several temperatures, or reads every class's logit.
    topk_compatible: bool = True
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
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

    def bind_student(self, student: nn.Module) -> None:
        """Take what the loss needs from the student network's structure once, when the distiller is
        built, e.g. TinyBERT's attention head count; a no-op by default."""

    def bind_teacher(self, teacher: nn.Module) -> None:
        """Take what the loss needs from the frozen teacher network's weights once, when the distiller is
        built, e.g. OFD's margins from its BatchNorm parameters or WKD-L's class costs from its
        classifier ``head``; a no-op by default."""

    def trains_alone(self, epoch: int) -> bool:
        """Whether this term is the whole objective at ``epoch`` (a pretraining stage, such as
        FitNets' hint stage); then no other term is optimised. Never, by default."""
        return False

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        """The loss of one batch, a scalar; ``teacher`` carries no graph."""
        raise NotImplementedError


class LogitLoss(DistillationLoss):
    """A loss on the teacher's logits softened at ``temperature`` (KD, DKD, DIST, NKD, WKD-L).

    The temperature is declared here, once: a top-k teacher cache reads it to keep the dropped
    classes' probability mass exact at the temperature the loss softens them at. ``standardize``
    z-scores each sample's logits before the temperature (logit standardisation,
    :func:`~kd_lightning.losses._utils.standardize_logits`); it reads every class's logit, so a
    top-k teacher cache cannot serve it exactly.
    """

    def __init__(self, temperature: float, standardize: bool = False) -> None:
        super().__init__()
        check_temperature(temperature)
        self.temperature = temperature
        self.standardize = standardize
        self.topk_compatible = not standardize
