"""Logit standardisation (LS-KD, Sun et al. 2024) on every logit loss: hand values in float64,
gradcheck, the invariance it exists for, and the top-k cache that cannot serve it."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.errors import ConfigError
from kd_lightning.losses import create_loss, dist_loss, dkd_loss, kd_loss, list_losses, nkd_loss
from kd_lightning.losses._utils import standardize_logits
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.5], [-1.0, 2.5, 0.0, 0.7]], dtype=torch.float64)
T = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 0.5, -1.0, 2.0], [0.5, 3.0, -0.5, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 3, 2])


def _zscore(row: list[float]) -> list[float]:
    """LS-KD's z-score: unbiased standard deviation (divisor C − 1) plus 1e-7."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def test_standardize_is_the_unbiased_z_score() -> None:
    expected = torch.tensor([_zscore(row) for row in S.tolist()], dtype=torch.float64)
    torch.testing.assert_close(standardize_logits(S), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("temperature", [4.0, 2.0])
def test_kd_with_standardize_keeps_the_t_squared_factor(temperature: float) -> None:
    expected = 0.0
    for s, t in zip(S.tolist(), T.tolist(), strict=True):
        p_s, p_t = _softmax(_zscore(s), temperature), _softmax(_zscore(t), temperature)
        expected += sum(pt * math.log(pt / ps) for ps, pt in zip(p_s, p_t, strict=True)) / len(S)
    got = kd_loss(S, T, temperature, standardize=True)
    assert got.item() == pytest.approx(expected * temperature**2, rel=1e-10)


def test_every_logit_loss_standardizes_before_the_temperature() -> None:
    z_s = torch.tensor([_zscore(r) for r in S.tolist()], dtype=torch.float64)
    z_t = torch.tensor([_zscore(r) for r in T.tolist()], dtype=torch.float64)
    pairs = [
        (dkd_loss(S, T, Y, 1.0, 8.0, 4.0, standardize=True), dkd_loss(z_s, z_t, Y, 1.0, 8.0, 4.0)),
        (dist_loss(S, T, 2.0, 2.0, 4.0, standardize=True), dist_loss(z_s, z_t, 2.0, 2.0, 4.0)),
        (nkd_loss(S, T, Y, 3.0, 3.5, standardize=True), nkd_loss(z_s, z_t, Y, 3.0, 3.5)),
    ]
    for got, expected in pairs:
        assert got.item() == pytest.approx(expected.item(), rel=1e-10)
        assert got.item() != pytest.approx(0.0)


def test_standardized_kd_ignores_each_samples_shift_and_scale() -> None:
    """What LS is for: a student whose logits are the teacher's up to a per-sample affine map has
    nothing left to learn."""
    shift, scale = torch.tensor([[3.0], [-2.0], [0.5]]), torch.tensor([[0.2], [5.0], [1.7]])
    student = T * scale + shift
    assert kd_loss(student, T, 4.0, standardize=True).item() == pytest.approx(0.0, abs=1e-12)
    assert kd_loss(student, T, 4.0).item() > 0.1


@pytest.mark.parametrize(
    "loss",
    [
        lambda a: kd_loss(a, T, 4.0, standardize=True),
        lambda a: dkd_loss(a, T, Y, 1.0, 8.0, 4.0, standardize=True),
        lambda a: dist_loss(a, T, 1.0, 1.0, 4.0, standardize=True),
    ],
    ids=["kd", "dkd", "dist"],
)
def test_standardized_losses_gradcheck(loss) -> None:
    assert torch.autograd.gradcheck(loss, (S.clone().requires_grad_(),))


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "nkd", "ctkd", "mlkd", "wkd"])
def test_every_logit_loss_takes_standardize(name: str) -> None:
    assert name in list_losses()
    assert create_loss(name, standardize=True).standardize is True
    assert create_loss(name).standardize is False


@pytest.mark.parametrize(
    "term",
    [
        {"name": "kd", "kwargs": {"temperature": 4.0, "standardize": True}},
        {"name": "ctkd"},  # a learnt temperature
        {"name": "mlkd"},  # several temperatures
    ],
    ids=lambda t: t["name"] + ("+ls" if t.get("kwargs", {}).get("standardize") else ""),
)
def test_a_top_k_teacher_cache_refuses_terms_it_cannot_serve(teacher_spec, term) -> None:
    terms = [{"name": "ce"}, term]
    student = ModelSpec("small_cnn", kwargs={"width": 4})
    with pytest.raises(
        ConfigError, match=rf"teacher_cache.topk drops the teacher's other logits, but terms \['{term['name']}'\]"
    ):
        DistillationModule(
            student, teacher_spec, num_classes=10, losses=terms, teacher_cache=TeacherCacheConfig(topk=3)
        )
