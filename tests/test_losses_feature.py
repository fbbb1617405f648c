"""FitNets, AT, SP, RKD and PKT against their formulas in float64, with gradcheck."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kd_lightning.losses import (
    AttentionTransferLoss,
    FitNetLoss,
    ModelOutputs,
    StepContext,
    at_loss,
    create_loss,
    hint_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
)

GEN = torch.Generator().manual_seed(0)
FS = torch.randn(3, 2, 2, 3, generator=GEN, dtype=torch.float64)  # student maps [B, C, H, W]
FT = torch.randn(3, 4, 2, 3, generator=GEN, dtype=torch.float64)  # teacher maps, wider
ES = torch.randn(4, 3, generator=GEN, dtype=torch.float64)  # student embeddings [B, D]
ET = torch.randn(4, 5, generator=GEN, dtype=torch.float64)


def _gradcheck(fn, x: torch.Tensor) -> bool:
    return torch.autograd.gradcheck(fn, (x.clone().requires_grad_(),))


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_hint_loss_is_the_mean_squared_error() -> None:
    a, b = FT, FT.flip(0)
    expected = sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True)) / a.numel()
    assert hint_loss(a, b).item() == pytest.approx(expected, rel=1e-12)
    assert _gradcheck(lambda x: hint_loss(x, b), a)


def test_fitnet_regressor_maps_student_width_to_teacher_width() -> None:
    loss = FitNetLoss(["s"], ["t"])
    loss.build({"s": FS.shape}, {"t": FT.shape})
    value = loss(ModelOutputs(ES, {"s": FS.float()}), ModelOutputs(ET, {"t": FT.float()}), StepContext(torch.zeros(3)))
    value.backward()
    assert all(p.grad is not None for p in loss.parameters())
    with pytest.raises(ValueError, match="same spatial size"):
        loss.build({"s": torch.Size([3, 2, 4, 4])}, {"t": FT.shape})


def _attention(maps: torch.Tensor) -> list[list[float]]:
    out = []
    for sample in maps.tolist():
        channels, height, width = len(sample), len(sample[0]), len(sample[0][0])
        a = [sum(sample[c][h][w] ** 2 for c in range(channels)) / channels for h in range(height) for w in range(width)]
        out.append([v / _norm(a) for v in a])
    return out


def test_at_loss_matches_normalised_attention_maps() -> None:
    q_s, q_t = _attention(FS), _attention(FT)
    diffs = [(x - y) ** 2 for qs, qt in zip(q_s, q_t, strict=True) for x, y in zip(qs, qt, strict=True)]
    assert at_loss(FS, FT).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-12)
    assert _gradcheck(lambda x: at_loss(x, FT), FS)


def test_at_pools_the_larger_map_and_sums_layers() -> None:
    big = torch.randn(3, 2, 4, 6, generator=GEN, dtype=torch.float64)
    pooled = torch.nn.functional.avg_pool2d(big, 2)
    assert at_loss(big, FT).item() == pytest.approx(at_loss(pooled, FT).item(), rel=1e-12)
    module = AttentionTransferLoss(["a", "b"], ["c", "d"])
    total = module(
        ModelOutputs(ES, {"a": FS, "b": big}), ModelOutputs(ET, {"c": FT, "d": FT}), StepContext(torch.zeros(3))
    )
    assert total.item() == pytest.approx(at_loss(FS, FT).item() + at_loss(big, FT).item(), rel=1e-12)


def _row_normalised_gram(x: torch.Tensor) -> list[list[float]]:
    rows = [r for r in x.flatten(1).tolist()]
    gram = [[sum(a * b for a, b in zip(r1, r2, strict=True)) for r2 in rows] for r1 in rows]
    return [[v / _norm(row) for v in row] for row in gram]


def _hand_sp(student: torch.Tensor, teacher: torch.Tensor) -> float:
    g_s, g_t = _row_normalised_gram(student), _row_normalised_gram(teacher)
    b = len(student)
    return sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_loss_matches_batch_similarity_formula() -> None:
    assert sp_loss(FS, FT).item() == pytest.approx(_hand_sp(FS, FT), rel=1e-12)
    assert _gradcheck(lambda x: sp_loss(x, FT), FS)


def _distances(x: torch.Tensor) -> list[list[float]]:
    rows = x.tolist()
    return [[_norm([a - b for a, b in zip(r1, r2, strict=True)]) for r2 in rows] for r1 in rows]


def test_rkd_distance_matches_normalised_distance_potentials() -> None:
    b = len(ES)
    d_s, d_t = _distances(ES), _distances(ET)
    mu_s = sum(map(sum, d_s)) / (b * (b - 1))
    mu_t = sum(map(sum, d_t)) / (b * (b - 1))
    terms = [_huber(d_s[i][j] / mu_s - d_t[i][j] / mu_t) for i in range(b) for j in range(b)]
    assert rkd_distance_loss(ES, ET).item() == pytest.approx(sum(terms) / b**2, rel=1e-12)
    assert _gradcheck(lambda x: rkd_distance_loss(x, ET), ES)


def _cos_angle(x: list[list[float]], i: int, j: int, k: int) -> float:
    if i == j or k == j:
        return 0.0
    e_ij = [a - b for a, b in zip(x[i], x[j], strict=True)]
    e_kj = [a - b for a, b in zip(x[k], x[j], strict=True)]
    return sum(a * b for a, b in zip(e_ij, e_kj, strict=True)) / (_norm(e_ij) * _norm(e_kj))


def _hand_rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> float:
    s, t, b = student.flatten(1).tolist(), teacher.flatten(1).tolist(), len(student)
    # Over all b³ index triples (j is the apex), degenerate ones count as 0 in both networks.
    terms = [
        _huber(_cos_angle(s, i, j, k) - _cos_angle(t, i, j, k)) for j, i, k in itertools.product(range(b), repeat=3)
    ]
    return sum(terms) / b**3


def test_rkd_angle_matches_triplet_cosines() -> None:
    assert rkd_angle_loss(ES, ET).item() == pytest.approx(_hand_rkd_angle(ES, ET), rel=1e-10)
    assert _gradcheck(lambda x: rkd_angle_loss(x, ET), ES)


def test_rkd_weights_and_module() -> None:
    expected = 25 * rkd_distance_loss(ES, ET) + 50 * rkd_angle_loss(ES, ET)
    assert rkd_loss(ES, ET).item() == pytest.approx(expected.item(), rel=1e-12)
    module = create_loss("rkd", distance_weight=1.0, angle_weight=0.0)
    got = module(ModelOutputs(ES, {"backbone": ES}), ModelOutputs(ET, {"backbone": ET}), StepContext(torch.zeros(4)))
    assert got.item() == pytest.approx(rkd_distance_loss(ES, ET).item(), rel=1e-12)


def _pkt_conditional(x: torch.Tensor) -> list[list[float]]:
    rows = [[v / _norm(r) for v in r] for r in x.flatten(1).tolist()]
    kernel = [[(sum(a * b for a, b in zip(r1, r2, strict=True)) + 1) / 2 for r2 in rows] for r1 in rows]
    return [[v / sum(row) for v in row] for row in kernel]


def _hand_pkt(student: torch.Tensor, teacher: torch.Tensor) -> float:
    p_s, p_t = _pkt_conditional(student), _pkt_conditional(teacher)
    b = len(student)
    return sum(p_t[i][j] * math.log(p_t[i][j] / p_s[i][j]) for i in range(b) for j in range(b)) / b**2


def test_pkt_matches_cosine_kernel_divergence() -> None:
    assert pkt_loss(ES, ET).item() == pytest.approx(_hand_pkt(ES, ET), rel=1e-5)  # eps=1e-7 inside the log
    assert _gradcheck(lambda x: pkt_loss(x, ET), ES)


def test_feature_losses_reject_unpaired_layers() -> None:
    with pytest.raises(ValueError, match="one to one"):
        create_loss("at", student_layers=["layer1", "layer2"], teacher_layers=["layer3"])
    with pytest.raises(ValueError, match="feature maps"):
        AttentionTransferLoss(["s"], ["t"]).build({"s": ES.shape}, {"t": FT.shape})


# Post-ReLU activations, wide enough that a half-precision Gram matrix or cosine visibly rounds.
WIDE_S = torch.randn(6, 64, 2, 2, generator=GEN).relu()
WIDE_T = torch.randn(6, 96, 2, 2, generator=GEN).relu()


@pytest.mark.parametrize(
    ("loss_fn", "hand"),
    [(sp_loss, _hand_sp), (pkt_loss, _hand_pkt), (rkd_angle_loss, _hand_rkd_angle)],
    ids=["sp", "pkt", "rkd_angle"],
)
def test_batch_relation_losses_stay_float32_under_bf16_autocast(loss_fn, hand) -> None:
    """In a bf16-mixed step the features arrive in bf16 inside an autocast region, where a matrix
    product would run in bf16 even on float32 inputs; the loss must still be the float32 value."""
    student, teacher = WIDE_S.bfloat16(), WIDE_T.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss_fn(student, teacher)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(hand(student.double(), teacher.double()), rel=1e-4)
