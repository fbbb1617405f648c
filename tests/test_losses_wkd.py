"""WKD-L as its authors' code computes it, by hand in float64 (Sinkhorn in plain Python), gradcheck,
the cost from the teacher's classifier, the cosine decay of γ and the distiller binding the head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kd_lightning.data.batch import Batch
from kd_lightning.losses import (
    ModelOutputs,
    StepContext,
    WKDLogitLoss,
    classifier_cost_matrix,
    create_loss,
    wkd_logit_loss,
)
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5], [-1.0, 2.5, 0.0, 0.7]], dtype=torch.float64)
T = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -1.0, 2.0], [0.5, 3.0, -0.5, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 3, 2])
HEAD = torch.tensor([[1.0, 0.0, 0.5], [0.8, 0.6, 0.0], [0.0, 1.0, -1.0], [-0.5, 0.2, 1.0]], dtype=torch.float64)


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _cost(sharpen: float = 0.0) -> list[list[float]]:
    rows = HEAD.tolist()
    norms = [math.sqrt(sum(v * v for v in r)) for r in rows]
    cost = [
        [1 - sum(a * b for a, b in zip(ri, rj, strict=True)) / (ni * nj) for rj, nj in zip(rows, norms, strict=True)]
        for ri, ni in zip(rows, norms, strict=True)
    ]
    return [[1 - math.exp(-sharpen * c) for c in row] for row in cost] if sharpen else cost


def _sinkhorn(p: list[float], q: list[float], cost: list[list[float]], reg: float, iters: int) -> float:
    n = len(p)
    kernel = [[math.exp(-c / reg) for c in row] for row in cost]
    u, v = [1.0 / n] * n, [0.0] * n
    for _ in range(iters):
        v = [q[j] / (sum(kernel[i][j] * u[i] for i in range(n)) + 1e-8) for j in range(n)]
        u = [p[i] / (sum(kernel[i][j] * v[j] for j in range(n)) + 1e-8) for i in range(n)]
    return sum(u[i] * kernel[i][j] * v[j] * cost[i][j] for i in range(n) for j in range(n))


def _wkd(temperature: float, gamma: float, reg: float, iters: int, sharpen: float = 0.0) -> float:
    full_cost = _cost(sharpen)
    target_term, wd = 0.0, 0.0
    for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist(), strict=True):
        target_term += -_softmax(t, 1.0)[y] * math.log(_softmax(s, 1.0)[y]) / len(S)
        rest = [i for i in range(len(s)) if i != y]
        cost = [[max(full_cost[i][j], 0.0) + 1e-8 for j in rest] for i in rest]
        p = _softmax([s[i] for i in rest], temperature)
        q = _softmax([t[i] for i in rest], temperature)
        wd += _sinkhorn(p, q, cost, reg, iters) / len(S)
    return target_term + gamma * wd  # γ weights the Wasserstein term only


@pytest.mark.parametrize(
    ("temperature", "gamma", "reg", "iters", "sharpen"), [(2.0, 1.0, 0.05, 10, 0.0), (4.0, 2.5, 0.1, 30, 2.0)]
)
def test_wkd_matches_the_hand_computed_value(temperature, gamma, reg, iters, sharpen) -> None:
    cost = classifier_cost_matrix(HEAD, sharpen)
    torch.testing.assert_close(cost, torch.tensor(_cost(sharpen), dtype=torch.float64))
    got = wkd_logit_loss(S, T, Y, cost, temperature, gamma, reg, iters)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_wkd(temperature, gamma, reg, iters, sharpen), rel=1e-9)


def test_wkd_gradcheck() -> None:
    cost = classifier_cost_matrix(HEAD)
    assert torch.autograd.gradcheck(
        lambda a: wkd_logit_loss(a, T, Y, cost, 2.0, 1.0, 0.1, 10), (S.clone().requires_grad_(),)
    )


def test_wasserstein_term_vanishes_when_the_non_target_distributions_agree() -> None:
    cost = classifier_cost_matrix(HEAD)
    with_wd = wkd_logit_loss(T, T, Y, cost, 2.0, 5.0, 0.05, 50)
    without = wkd_logit_loss(T, T, Y, cost, 2.0, 0.0, 0.05, 50)
    apart = wkd_logit_loss(S, T, Y, cost, 2.0, 5.0, 0.05, 50) - wkd_logit_loss(S, T, Y, cost, 2.0, 0.0)
    # Only the entropic blur of Sinkhorn is left between equal distributions.
    assert 0.0 < (with_wd - without).item() < 0.01 < 0.1 < apart.item()


def test_gamma_decays_on_a_half_cosine_after_its_start_epoch() -> None:
    module = WKDLogitLoss(gamma=2.0, decay_start_epoch=200, max_epochs=240)
    assert module.gamma_at(0) == 2.0 and module.gamma_at(199) == 2.0  # authors' epochs 1 … 200
    assert module.gamma_at(219) == pytest.approx(1.0)  # authors' epoch 220, half way
    assert module.gamma_at(239) == pytest.approx(0.0, abs=1e-12)
    assert WKDLogitLoss(gamma=2.0).gamma_at(239) == 2.0
    with pytest.raises(ValueError, match="needs max_epochs after it"):
        WKDLogitLoss(decay_start_epoch=200)


def test_module_takes_its_cost_from_the_teacher_head() -> None:
    module = create_loss("wkd", temperature=2.0, gamma=1.0, sinkhorn_reg=0.05, sinkhorn_iters=10)
    head = nn.Linear(3, 4).double()
    with torch.no_grad():
        head.weight.copy_(HEAD)
    module.bind_teacher(nn.ModuleDict({"head": head}))
    assert "cost" not in module.state_dict()  # rebuilt from the teacher, never stored
    value = module(ModelOutputs(S), ModelOutputs(T), StepContext(Y))
    assert value.item() == pytest.approx(_wkd(2.0, 1.0, 0.05, 10), rel=1e-9)
    with pytest.raises(ValueError, match="teacher's head is a Identity"):
        module.bind_teacher(nn.ModuleDict({"head": nn.Identity()}))
    with pytest.raises(ValueError, match="teacher's head is a NoneType"):
        module.bind_teacher(nn.Linear(3, 4))


def test_distiller_binds_the_teacher_head_and_trains(teacher_spec) -> None:
    terms = [{"name": "ce"}, {"name": "wkd", "kwargs": {"temperature": 2.0, "gamma": 2.0}}]
    module = DistillationModule(ModelSpec("small_cnn", kwargs={"width": 4}), teacher_spec, 10, losses=terms)
    loss_module = module.loss_terms["wkd"]
    torch.testing.assert_close(loss_module.cost, classifier_cost_matrix(module.teacher.network.head.weight))
    module.log = module.log_dict = lambda *a, **k: None
    module.train()
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    loss = module.training_step(Batch(y, images=x), 0)
    with torch.no_grad():
        student, teacher = module.network(x), module.teacher(x).logits
        expected = torch.nn.functional.cross_entropy(student, y) + wkd_logit_loss(
            student, teacher, y, loss_module.cost, 2.0, 2.0
        )
    torch.testing.assert_close(loss, expected)
