import math

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.metrics import TeacherStudentKL, classification_metrics, teacher_student_kl


def test_metric_names_by_class_count():
    assert set(classification_metrics(10)) == {"acc", "acc_top5", "f1_macro", "ece"}
    assert set(classification_metrics(10, evaluation=False)) == {"acc", "acc_top5"}
    assert set(classification_metrics(5)) == {"acc", "f1_macro", "ece"}


def test_ece_against_hand_computed_value():
    probs = torch.tensor(
        [[0.9, 0.05, 0.05], [0.78, 0.12, 0.10], [0.10, 0.58, 0.32], [0.20, 0.25, 0.55]], dtype=torch.float64
    )
    targets = torch.tensor([0, 1, 1, 2])
    # 15 bins of width 1/15: 0.9 alone (right), 0.78 alone (wrong), 0.58 and 0.55 share (0.533, 0.6] (both right).
    expected = (abs(0.9 - 1) + abs(0.78 - 0) + 2 * abs((0.58 + 0.55) / 2 - 1)) / 4
    metrics = classification_metrics(3)
    metrics.update(probs, targets)
    result = metrics.compute()
    assert result["ece"].item() == pytest.approx(expected, abs=1e-6)
    assert result["acc"].item() == pytest.approx(0.75)
    # Per-class F1: class 0 (P=1/2, R=1 -> 2/3), class 1 (P=1, R=1/2 -> 2/3), class 2 (1).
    assert result["f1_macro"].item() == pytest.approx((2 / 3 + 2 / 3 + 1) / 3, abs=1e-6)


def test_top5_accuracy():
    logits = torch.arange(10, dtype=torch.float32).repeat(2, 1)  # ranking 9, 8, 7, 6, 5, ...
    metrics = classification_metrics(10)
    metrics.update(logits, torch.tensor([5, 4]))  # rank 5 (in top-5) and rank 6 (not)
    assert metrics.compute()["acc_top5"].item() == pytest.approx(0.5)


def test_kl_against_hand_computed_value():
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]], dtype=torch.float64)
    student = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl = teacher_student_kl(student, teacher)
    assert kl.dtype == torch.float64
    assert kl.tolist() == pytest.approx([expected, 0.0], abs=1e-12)


def test_kl_matches_torch_kl_div_and_is_float32_under_half_precision():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 8, 5, generator=gen, dtype=torch.float64)
    reference = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="none")
    assert torch.allclose(teacher_student_kl(student, teacher), reference.sum(-1), atol=1e-12)
    half = teacher_student_kl(student.bfloat16(), teacher.bfloat16())
    assert half.dtype == torch.float32
    assert (half >= 0).all()


def test_kl_metric_is_the_mean_over_batches():
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 10, 4, generator=gen)
    metric = TeacherStudentKL()
    metric.update(student[:3], teacher[:3])
    metric.update(student[3:], teacher[3:])
    assert metric.compute().item() == pytest.approx(teacher_student_kl(student, teacher).mean().item(), rel=1e-6)


def test_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        teacher_student_kl(torch.zeros(2, 3), torch.zeros(2, 4))
