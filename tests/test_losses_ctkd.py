"""CTKD: KD at a learnt temperature whose gradient is reversed on a cosine curriculum."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.data.batch import Batch
from kd_lightning.losses import (
    CTKDLoss,
    ModelOutputs,
    StepContext,
    cosine_reversal_strength,
    create_loss,
    kd_loss_at,
    reverse_gradient,
)
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5], [-1.0, 2.5, 0.0, 0.7]], dtype=torch.float64)
T = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -1.0, 2.0], [0.5, 3.0, -0.5, 0.0]], dtype=torch.float64)


def _kd(temperature: float) -> float:
    total = 0.0
    for s, t in zip(S.tolist(), T.tolist(), strict=True):
        e_s, e_t = [math.exp(v / temperature) for v in s], [math.exp(v / temperature) for v in t]
        p_s, p_t = [e / sum(e_s) for e in e_s], [e / sum(e_t) for e in e_t]
        total += sum(pt * math.log(pt / ps) for ps, pt in zip(p_s, p_t, strict=True)) / len(S)
    return total * temperature**2


def test_kd_at_a_tensor_temperature_is_hintons_kd() -> None:
    got = kd_loss_at(S, T, torch.tensor([3.7], dtype=torch.float64))
    assert got.item() == pytest.approx(_kd(3.7), rel=1e-10)


def test_kd_at_gradcheck_in_logits_and_temperature() -> None:
    temperature = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, tau: kd_loss_at(a, T, tau), (S.clone().requires_grad_(), temperature))


def test_reversal_strength_follows_the_authors_cosine_from_their_first_epoch() -> None:
    # The authors' CosineDecay(max 0, min -1, 10 loops) at their epoch e (1-based) is -strength.
    for epoch in (0, 4, 9, 30):
        step = min(epoch + 1, 10)
        authors = (math.cos(step * math.pi / 10) + 1.0) * 0.5 * (0.0 - (-1.0)) + (-1.0)
        assert cosine_reversal_strength(epoch, 10) == pytest.approx(-authors, rel=1e-12, abs=1e-15)
    assert cosine_reversal_strength(0, 10) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert cosine_reversal_strength(9, 10) == 1.0 and cosine_reversal_strength(100, 10) == 1.0


def test_gradient_reversal_is_identity_forward_and_scales_the_gradient_by_minus_strength() -> None:
    x = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([2.0, 3.0], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.5, -0.75], dtype=torch.float64))


def test_the_temperature_ascends_the_loss_the_student_descends() -> None:
    module = create_loss("ctkd").double()
    assert isinstance(module, CTKDLoss)
    student = S.clone().requires_grad_()
    value = module(ModelOutputs(student), ModelOutputs(T), StepContext(torch.zeros(3, dtype=torch.long), epoch=4))
    temperature = 1.0 + 20.0 / (1.0 + math.exp(-1.0))  # t_start + t_end·sigmoid(τ = 1)
    assert value.item() == pytest.approx(_kd(temperature), rel=1e-10)
    value.backward()
    # dL/dτ by central differences of the plain formula, then reversed at the epoch's strength.
    h = 1e-4  # the KL of two close distributions cancels digits: a smaller step is noise
    sig = lambda tau: 1.0 + 20.0 / (1.0 + math.exp(-tau))  # noqa: E731
    numeric = (_kd(sig(1.0 + h)) - _kd(sig(1.0 - h))) / (2 * h)
    strength = cosine_reversal_strength(4, 10)
    assert module.temperature_module.tau.grad.item() == pytest.approx(-strength * numeric, rel=1e-6)
    # The student's own gradient is KD's at that temperature, untouched by the reversal.
    reference = S.clone().requires_grad_()
    kd_loss_at(reference, T, torch.tensor([temperature], dtype=torch.float64)).backward()
    torch.testing.assert_close(student.grad, reference.grad)


def test_the_distiller_trains_the_temperature(teacher_spec) -> None:
    terms = [{"name": "ce", "weight": 0.1}, {"name": "ctkd", "weight": 0.9}]
    module = DistillationModule(ModelSpec("small_cnn", kwargs={"width": 4}), teacher_spec, 10, losses=terms)
    tau = module.loss_terms["ctkd"].temperature_module.tau
    assert any(p is tau for p in module.trainable_parameters())
    module.log = module.log_dict = lambda *a, **k: None
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.5)
    module.train()
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    loss = module.training_step(Batch(y, images=x), 0)
    with torch.no_grad():
        temperature = module.loss_terms["ctkd"].temperature_module(0.0)
        kd = kd_loss_at(module.network(x), module.teacher(x).logits, temperature)
        ce = torch.nn.functional.cross_entropy(module.network(x), y)
    torch.testing.assert_close(loss, 0.1 * ce + 0.9 * kd)
    loss.backward()
    before = tau.item()
    optimizer.step()
    # The reversed gradient raises the temperature where a higher one makes the student's task harder.
    assert tau.grad is not None and tau.item() != before
    assert (tau.item() - before) * tau.grad.item() < 0
