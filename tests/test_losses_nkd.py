"""NKD against its definition in float64 (the authors' cross-entropies), gradcheck, module."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.losses import ModelOutputs, NKDLoss, StepContext, create_loss, nkd_loss

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5], [-1.0, 2.5, 0.0, 0.7]], dtype=torch.float64)
T = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -1.0, 2.0], [0.5, 3.0, -0.5, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 3, 2])


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _nkd(temperature: float, gamma: float) -> float:
    target_term, non_target = 0.0, 0.0
    for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist(), strict=True):
        target_term += -_softmax(t, 1.0)[y] * math.log(_softmax(s, 1.0)[y]) / len(S)
        rest_s = _softmax([v for i, v in enumerate(s) if i != y], temperature)
        rest_t = _softmax([v for i, v in enumerate(t) if i != y], temperature)
        non_target += -sum(pt * math.log(ps) for ps, pt in zip(rest_s, rest_t, strict=True)) / len(S)
    return target_term + gamma * temperature**2 * non_target


@pytest.mark.parametrize(("temperature", "gamma"), [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_the_hand_computed_value(temperature: float, gamma: float) -> None:
    got = nkd_loss(S, T, Y, temperature, gamma)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_nkd(temperature, gamma), rel=1e-10)


def test_nkd_gradcheck() -> None:
    assert torch.autograd.gradcheck(lambda a: nkd_loss(a, T, Y, 3.0, 3.5), (S.clone().requires_grad_(),))


def test_the_non_target_term_ignores_the_target_logit() -> None:
    """Only the target term reads the target logit: raising it changes the loss by the target term alone."""
    moved = S.clone()
    moved[torch.arange(3), Y] += 2.0
    target_only = nkd_loss(moved, T, Y, 3.0, 0.0) - nkd_loss(S, T, Y, 3.0, 0.0)
    assert (nkd_loss(moved, T, Y, 3.0, 3.5) - nkd_loss(S, T, Y, 3.0, 3.5)).item() == pytest.approx(
        target_only.item(), rel=1e-10
    )


def test_module_reads_the_context_labels() -> None:
    module = create_loss("nkd", temperature=3.0, gamma=3.5)
    assert isinstance(module, NKDLoss) and module.needs_labels
    value = module(ModelOutputs(S), ModelOutputs(T), StepContext(Y))
    assert value.item() == pytest.approx(_nkd(3.0, 3.5), rel=1e-10)
