"""Hinton KD loss against hand-computed values and gradients."""

import math

import pytest
import torch

from kd_lightning.losses import KDLoss, ModelOutputs, StepContext, create_loss, kd_loss


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_kd(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T² · mean over the batch of Σ_c p_t log(p_t / p_s), in plain Python floats."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    return t * t * total / len(student)


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_matches_hand_computed_value(temperature: float) -> None:
    value = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert value.item() == pytest.approx(_hand_kd(STUDENT, TEACHER, temperature), rel=1e-6)


def test_kd_loss_is_batch_mean_not_sum_or_element_mean() -> None:
    one = kd_loss(torch.tensor(STUDENT[:1]), torch.tensor(TEACHER[:1]), 2.0)
    two = kd_loss(torch.tensor(STUDENT[:1] * 2), torch.tensor(TEACHER[:1] * 2), 2.0)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits() -> None:
    logits = torch.tensor(STUDENT)
    assert kd_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_gradient_is_softmax_difference_times_t() -> None:
    """d/ds [T² KL] = T · (softmax(s/T) − softmax(t/T)) / B: the T² factor keeps gradients O(1/T)."""
    t = 4.0
    student = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    kd_loss(student, teacher, t).backward()
    expected = t * (torch.softmax(student.detach() / t, -1) - torch.softmax(teacher / t, -1)) / len(STUDENT)
    torch.testing.assert_close(student.grad, expected)


def test_kd_loss_gradcheck_float64() -> None:
    student = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, 3.0), (student,))


def test_kd_loss_computes_in_float32_for_half_inputs() -> None:
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    value = kd_loss(student.bfloat16(), teacher.bfloat16(), 4.0)
    assert value.dtype == torch.float32
    reference = _hand_kd(student.bfloat16().float().tolist(), teacher.bfloat16().float().tolist(), 4.0)
    assert value.item() == pytest.approx(reference, rel=1e-5)


def test_kd_loss_rejects_bad_temperature_and_shapes() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="same classes"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_kd_module_is_registered_and_wraps_the_function() -> None:
    loss = create_loss("kd", temperature=2.0)
    assert isinstance(loss, KDLoss)
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert loss(ModelOutputs(s), ModelOutputs(t), StepContext(torch.tensor([0, 2]))).item() == pytest.approx(
        _hand_kd(STUDENT, TEACHER, 2.0), rel=1e-6
    )
    with pytest.raises(ValueError, match="Did you mean: kd"):
        create_loss("kdd")
