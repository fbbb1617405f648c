"""MLKD as its authors' code computes it, by hand in float64, gradcheck, module on one view."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.losses import MLKDLoss, ModelOutputs, StepContext, create_loss, mlkd_loss

SW = torch.tensor(
    [[2.0, -1.0, 0.5, 0.0, 0.3], [0.3, 0.2, -0.4, 1.5, 0.0], [-1.0, 2.5, 0.0, 0.7, 0.1], [0.4, 0.4, 1.0, -2.0, 0.9]],
    dtype=torch.float64,
)
TW = torch.tensor(
    [[3.0, 0.0, 1.0, -1.0, 0.2], [0.0, 0.5, -1.0, 2.0, 0.3], [0.5, 3.0, -0.5, 0.0, 0.0], [1.0, 0.0, 2.0, -1.0, 0.4]],
    dtype=torch.float64,
)
SS, TS = SW.flip(1) * 0.7, TW.roll(1, dims=1) * 1.3
TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def _kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    total = 0.0
    for rs, rt in zip(s.tolist(), t.tolist(), strict=True):
        p_s, p_t = _softmax(rs, temperature), _softmax(rt, temperature)
        total += sum(pt * math.log(pt / ps) for ps, pt in zip(p_s, p_t, strict=True))
    return total / len(s) * temperature**2


def _gram_distance(s: torch.Tensor, t: torch.Tensor, temperature: float, over_classes: bool) -> float:
    p_s = [_softmax(r, temperature) for r in s.tolist()]
    p_t = [_softmax(r, temperature) for r in t.tolist()]
    if over_classes:  # [C, C] class correlations, divided by C
        p_s, p_t = [list(c) for c in zip(*p_s, strict=True)], [list(c) for c in zip(*p_t, strict=True)]
    n = len(p_s)
    total = 0.0
    for i in range(n):
        for j in range(n):
            g_s = sum(a * b for a, b in zip(p_s[i], p_s[j], strict=True))
            g_t = sum(a * b for a, b in zip(p_t[i], p_t[j], strict=True))
            total += (g_t - g_s) ** 2
    return total / n


def _share_at_or_below_median(values: list[float]) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * 0.5  # NumPy's percentile(…, 50), linear interpolation
    low = math.floor(position)
    median = ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (position - low)
    return sum(v <= median for v in values) / len(values)


def _authors_mlkd() -> float:
    probs = [_softmax(r, 1.0) for r in TW.tolist()]
    sample_share = _share_at_or_below_median([max(p) for p in probs])
    class_share = _share_at_or_below_median([sum(col) for col in zip(*probs, strict=True)])
    total = 0.0
    for i, temperature in enumerate(TEMPERATURES):
        total += sample_share * _kd(SW, TW, temperature)  # weak instance term, reduced before the mask
        total += _kd(SS, TS, temperature) if i < 3 else _kd(SW, TW, temperature)  # "strong" at 2 and 6 reads weak
        total += class_share * _gram_distance(SW, TW, temperature, over_classes=True)
        total += sample_share * _gram_distance(SW, TW, temperature, over_classes=False)
    return total


def test_mlkd_matches_the_authors_computation_by_hand() -> None:
    got = mlkd_loss(SW, TW, SS, TS, TEMPERATURES)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_authors_mlkd(), rel=1e-10)


def test_the_masks_are_shares_of_the_median_split() -> None:
    # With 4 samples and 5 classes: 2 samples and 3 classes lie at or below the median.
    probs = [_softmax(r, 1.0) for r in TW.tolist()]
    assert _share_at_or_below_median([max(p) for p in probs]) == 0.5
    assert _share_at_or_below_median([sum(c) for c in zip(*probs, strict=True)]) == 0.6


def test_mlkd_gradcheck_through_both_views() -> None:
    sw, ss = SW.clone().requires_grad_(), SS.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mlkd_loss(a, TW, b, TS), (sw, ss))


def test_standardize_touches_only_the_instance_terms() -> None:
    z = lambda x: (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)  # noqa: E731
    plain, standardized = mlkd_loss(SW, TW, SS, TS), mlkd_loss(SW, TW, SS, TS, standardize=True)
    # The sample share is 0.5 on this batch (test above).
    gram_terms = plain - sum(
        (0.5 * _kd(SW, TW, t) + (_kd(SS, TS, t) if i < 3 else _kd(SW, TW, t))) for i, t in enumerate(TEMPERATURES)
    )
    expected = gram_terms.item() + sum(
        0.5 * _kd(z(SW), z(TW), t) + (_kd(z(SS), z(TS), t) if i < 3 else _kd(z(SW), z(TW), t))
        for i, t in enumerate(TEMPERATURES)
    )
    assert standardized.item() == pytest.approx(expected, rel=1e-10)


def test_module_passes_the_one_view_as_both() -> None:
    module = create_loss("mlkd")
    assert isinstance(module, MLKDLoss)
    value = module(ModelOutputs(SW), ModelOutputs(TW), StepContext(torch.zeros(4, dtype=torch.long)))
    assert value.item() == pytest.approx(mlkd_loss(SW, TW, SW, TW).item(), rel=1e-12)
