"""DKD and DIST against their formulas in float64, gradients by gradcheck, modules and registry."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.losses import DISTLoss, DKDLoss, ModelOutputs, StepContext, create_loss, dist_loss, dkd_loss, kd_loss

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5], [-1.0, 2.5, 0.0, 0.7]], dtype=torch.float64)
T = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -1.0, 2.0], [0.5, 3.0, -0.5, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 3, 2])


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _dkd_parts(s: list[float], t: list[float], y: int, temperature: float) -> tuple[float, float, float]:
    """TCKD, NCKD and the teacher's target probability of one sample, by the paper's definitions."""
    p_s, p_t = _softmax(s, temperature), _softmax(t, temperature)
    tckd = _kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
    hat_s = [p / (1 - p_s[y]) for i, p in enumerate(p_s) if i != y]
    hat_t = [p / (1 - p_t[y]) for i, p in enumerate(p_t) if i != y]
    return tckd, _kl(hat_t, hat_s), p_t[y]


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_the_papers_definition(alpha: float, beta: float, temperature: float) -> None:
    expected = 0.0
    for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist(), strict=True):
        tckd, nckd, _ = _dkd_parts(s, t, y, temperature)
        expected += (alpha * tckd + beta * nckd) * temperature**2 / len(S)
    got = dkd_loss(S, T, Y, alpha, beta, temperature)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_kd_decomposes_into_tckd_and_weighted_nckd() -> None:
    """Eq. (5) of Zhao et al.: KD = TCKD + (1 − p_t^T)·NCKD, per sample."""
    for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist(), strict=True):
        tckd, nckd, p_target = _dkd_parts(s, t, y, 2.0)
        kd = kd_loss(torch.tensor([s]), torch.tensor([t]), 2.0).item() / 4.0
        assert kd == pytest.approx(tckd + (1 - p_target) * nckd, rel=1e-5)


def test_dkd_gradcheck() -> None:
    s = S.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: dkd_loss(a, T, Y, 1.0, 8.0, 4.0), (s,))


def test_dkd_warmup_is_linear_over_the_first_epochs() -> None:
    module = DKDLoss(warmup_epochs=4)
    student, teacher = ModelOutputs(S), ModelOutputs(T)
    full = dkd_loss(S, T, Y)
    factors = []
    for epoch in range(6):
        factors.append((module(student, teacher, StepContext(Y, epoch=epoch)) / full).item())
    assert factors == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert DKDLoss()(student, teacher, StepContext(Y)).item() == pytest.approx(full.item())


def _pearson(a: list[float], b: list[float], eps: float = 1e-8) -> float:
    """Pearson correlation, with the authors' ``eps`` added to the denominator."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / (math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) + eps)


@pytest.mark.parametrize(("beta", "gamma", "temperature"), [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_matches_pearson_relations(beta: float, gamma: float, temperature: float) -> None:
    p_s = [_softmax(row, temperature) for row in S.tolist()]
    p_t = [_softmax(row, temperature) for row in T.tolist()]
    inter = sum(1 - _pearson(a, b) for a, b in zip(p_s, p_t, strict=True)) / len(p_s)
    columns = range(S.shape[1])
    intra = sum(1 - _pearson([r[c] for r in p_s], [r[c] for r in p_t]) for c in columns) / len(columns)
    expected = temperature**2 * (beta * inter + gamma * intra)
    assert dist_loss(S, T, beta, gamma, temperature).item() == pytest.approx(expected, rel=1e-7)


def test_dist_is_zero_for_identical_logits_and_gradchecks() -> None:
    assert dist_loss(S, S).item() == pytest.approx(0.0, abs=1e-5)  # only the eps term remains
    s = S.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: dist_loss(a, T, 2.0, 2.0, 4.0), (s,))


def test_logit_losses_are_registered_and_validate() -> None:
    assert isinstance(create_loss("dkd", beta=6.0), DKDLoss)
    assert isinstance(create_loss("dist", beta=2.0, gamma=2.0, temperature=4.0), DISTLoss)
    with pytest.raises(ValueError, match="temperature"):
        DKDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="differ"):
        dist_loss(S, T[:, :3])
