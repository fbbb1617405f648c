"""The text peer: Hinton KD through TextBrewer's ``BasicDistiller``, driven as its quick start drives it.

TextBrewer (0.2.x) is not a kd_lightning dependency, not even an optional one: install it by hand into
the environment that runs the benchmark (``pip install --no-deps textbrewer`` plus ``tensorboardX``,
which its import needs). This module imports it lazily, so the benchmarks run without it.

TextBrewer calls a model as ``model(*batch)`` and reads its outputs through an *adaptor*; the student
returns its label loss beside its logits, as a Hugging Face model given ``labels`` does, and the
adaptor hands TextBrewer both. Its KD loss is the soft cross-entropy ``−Σ p_T log p_S`` at ``T``
without the ``T²`` factor, so ``kd_loss_weight = α·T²`` gives the gradient of kd_lightning's
``α·T²·KL``; the two losses differ by the constant ``α·T²·H(p_T)``, which has no gradient.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def unavailable_reason() -> str | None:
    """Why TextBrewer cannot run here (the import error, in one line), or None when it imports."""
    try:
        import textbrewer  # noqa: F401
    except Exception as err:  # an ImportError, or whatever its import-time code raises against this torch
        return f"{type(err).__name__}: {err}"
    return None


def version() -> str:
    import textbrewer

    return textbrewer.__version__


class Teacher(nn.Module):
    """A classifier as TextBrewer calls it: ``model(ids, labels)`` → logits (a teacher's labels go unused)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.network(ids)


class Student(Teacher):
    """The student as a Hugging Face classifier given labels returns: logits and the label cross-entropy."""

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.network(ids)
        return logits, F.cross_entropy(logits, labels)


def _teacher_adaptor(batch, logits: torch.Tensor) -> dict[str, Any]:
    return {"logits": logits}


def _student_adaptor(batch, outputs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    return {"logits": outputs[0], "losses": [outputs[1]]}


def distiller(
    teacher: nn.Module, student: nn.Module, temperature: float, alpha: float, cached: bool
) -> tuple[Any, Teacher, Student]:
    """A ``BasicDistiller`` for ``(1 − α)·CE + α·T²·KD`` on the CPU; ``cached``: its ``is_caching_logits``
    (the teacher's logits computed once, before the first epoch, with the batches they belong to)."""
    from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

    train_config = TrainingConfig(device="cpu", output_dir=tempfile.mkdtemp(prefix="textbrewer_"))
    distill_config = DistillationConfig(
        temperature=temperature,
        hard_label_weight=1.0 - alpha,
        kd_loss_type="ce",
        kd_loss_weight=alpha * temperature**2,
        is_caching_logits=cached,
    )
    wrapped_teacher, wrapped_student = Teacher(teacher).eval(), Student(student).train()
    box = BasicDistiller(
        train_config, distill_config, wrapped_teacher, wrapped_student, _teacher_adaptor, _student_adaptor
    )
    return box, wrapped_teacher, wrapped_student


def record_losses(box: Any, losses: list[torch.Tensor]) -> None:
    """Keep each step's total loss (detached) as ``BasicDistiller.train_on_batch`` returns it."""
    train_on_batch = box.train_on_batch

    def recorded(batch, args):
        total, parts = train_on_batch(batch, args)
        losses.append(total.detach())
        return total, parts

    box.train_on_batch = recorded


class StepHook:
    """A forward pre-hook on the model TextBrewer calls first in a step: drives a turn clock per step
    and closes an epoch every ``steps_per_epoch`` steps (``BasicDistiller.train`` has no epoch hook)."""

    def __init__(self, clock: Any, steps_per_epoch: int) -> None:
        self.clock, self.steps_per_epoch, self.steps = clock, steps_per_epoch, 0

    def __call__(self, module: nn.Module, args) -> None:
        if self.steps == self.steps_per_epoch:
            self.clock.epoch_end()
            self.steps = 0
        if self.steps == 0:
            self.clock.epoch_start()
        self.clock.step()
        self.steps += 1


def train(
    box: Any,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    epochs: int,
    first_model: nn.Module,
    clock: Any,
    steps_per_epoch: int,
) -> Callable[[], None]:
    """``box.train`` for ``epochs`` epochs over ``batches`` under ``clock``'s turns."""

    def run() -> None:
        first_model.register_forward_pre_hook(StepHook(clock, steps_per_epoch))
        with box:  # the teacher in eval mode, the student in train mode, as its quick start does
            box.train(optimizer, batches, num_epochs=epochs)
        clock.epoch_end()
        clock.scheduler.wait_turn(clock.name)

    return run
