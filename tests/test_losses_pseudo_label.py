"""Self-training on the teacher's hard labels: values and gradients by hand, the labels kept where given,
the threshold, and the distiller running it as the whole objective on an unlabeled transfer set."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.losses import PseudoLabelLoss, StepContext, create_loss, pseudo_label_loss, pseudo_label_targets
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from kd_lightning.outputs import IGNORE_LABEL, ModelOutputs

U = IGNORE_LABEL


def test_targets_are_the_label_where_given_and_the_teachers_argmax_elsewhere() -> None:
    teacher = torch.tensor([[0.0, 3.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    targets, counted = pseudo_label_targets(teacher, torch.tensor([0, U, U]))
    assert targets.tolist() == [0, 0, 2]  # sample 0 keeps its label 0 although the teacher says 1
    assert counted.tolist() == [True, True, True]


def test_value_is_cross_entropy_against_the_targets_by_hand() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[0.0, 4.0], [1.0, 0.0]])
    # sample 0 unlabeled: target 1 (teacher argmax); sample 1 labelled 1.
    expected = 0.5 * ((math.log(1 + math.e) - 0.0) + (math.log(1 + math.exp(2.0)) - 2.0))
    value = pseudo_label_loss(student, teacher, torch.tensor([U, 1]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_threshold_drops_unconfident_unlabeled_samples_but_averages_over_all() -> None:
    student = torch.zeros(3, 2)
    teacher = torch.tensor([[0.0, 0.1], [0.0, 9.0], [0.0, 0.1]])  # p(argmax) ≈ 0.52, 0.9999, 0.52
    labels = torch.tensor([U, U, 0])
    value = pseudo_label_loss(student, teacher, labels, threshold=0.9)
    # samples 1 (confident) and 2 (labelled) count, each log 2 at uniform student; divided by all 3
    assert value.item() == pytest.approx(2 * math.log(2) / 3, rel=1e-6)


def test_gradient_is_softmax_minus_one_hot_over_the_batch_and_none_to_the_teacher() -> None:
    torch.manual_seed(0)
    student = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([U, 2, U, 0])
    pseudo_label_loss(student, teacher, labels).backward()
    targets = torch.where(labels == U, teacher.detach().argmax(1), labels)
    expected = (student.detach().softmax(1) - torch.nn.functional.one_hot(targets, 3)) / 4
    torch.testing.assert_close(student.grad, expected)
    assert teacher.grad is None
    torch.autograd.gradcheck(
        lambda s: pseudo_label_loss(s, teacher.detach(), labels), (student.detach().clone().requires_grad_(),)
    )


def test_bad_threshold_and_mismatched_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        PseudoLabelLoss(threshold=1.5)
    with pytest.raises(ValueError, match="3 labels for 2 samples"):
        pseudo_label_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3, dtype=torch.long))


def test_a_threshold_is_refused_by_a_topk_cache_and_none_is_served() -> None:
    assert create_loss("pseudo_label").topk_compatible
    assert not create_loss("pseudo_label", threshold=0.9).topk_compatible


def test_distiller_runs_it_as_the_whole_objective(teacher_spec) -> None:
    module = DistillationModule(
        ModelSpec("small_cnn", kwargs={"width": 4}), teacher_spec, num_classes=10, losses=[{"name": "pseudo_label"}]
    )
    assert module.loss_weights == {"ce": 0.0, "pseudo_label": 1.0}  # ce unlisted: weight 0
    x = torch.rand(4, 1, 8, 8)
    labels = torch.tensor([3, U, U, 1])
    student = module.student_outputs(x)
    teacher = module.teacher(x)
    components = module.loss_components(student, teacher, StepContext(labels))
    expected = pseudo_label_loss(student.logits, teacher.logits, labels)
    torch.testing.assert_close(components["pseudo_label"], expected)
    assert isinstance(teacher, ModelOutputs)
