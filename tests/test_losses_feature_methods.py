"""NST, CC, VID, FSP, KDSVD, AB and FT against their formulas in float64, written out by hand, with gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.losses import (
    ABLoss,
    FSPLoss,
    FTLoss,
    ModelOutputs,
    StepContext,
    VIDLoss,
    ab_loss,
    cc_loss,
    fsp_loss,
    ft_loss,
    kdsvd_loss,
    nst_loss,
    vid_loss,
)

GEN = torch.Generator().manual_seed(0)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN, dtype=torch.float64)


def _gradcheck(fn, *inputs: torch.Tensor) -> bool:
    return torch.autograd.gradcheck(fn, tuple(x.clone().requires_grad_() for x in inputs))


def _channels(maps: torch.Tensor) -> list[list[list[float]]]:
    """``[B][C][H·W]`` nested lists of a ``[B, C, H, W]`` map."""
    return [[[v for row in channel for v in row] for channel in sample] for sample in maps.tolist()]


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _pool2(maps: torch.Tensor) -> torch.Tensor:
    """2×2 average pooling written out (the larger map of a pair, halved)."""
    b, c, h, w = maps.shape
    return maps.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


# NST ---------------------------------------------------------------------------------------------


def _hand_nst(student: torch.Tensor, teacher: torch.Tensor) -> float:
    total = 0.0
    for s_sample, t_sample in zip(_channels(student), _channels(teacher), strict=True):
        s = [_unit(c) for c in s_sample]
        t = [_unit(c) for c in t_sample]
        mmd = (
            sum(_dot(a, b) ** 2 for a in t for b in t) / len(t) ** 2
            + sum(_dot(a, b) ** 2 for a in s for b in s) / len(s) ** 2
            - 2 * sum(_dot(a, b) ** 2 for a in s for b in t) / (len(s) * len(t))
        )
        total += mmd
    return total / len(student)


def test_nst_is_the_polynomial_kernel_mmd_of_the_channels() -> None:
    s, t = _randn(2, 3, 2, 2), _randn(2, 5, 2, 2)
    assert nst_loss(s, t).item() == pytest.approx(_hand_nst(s, t), rel=1e-12)
    assert nst_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)
    big = _randn(2, 3, 4, 4)
    assert nst_loss(big, t).item() == pytest.approx(_hand_nst(_pool2(big), t), rel=1e-12)
    assert _gradcheck(lambda x: nst_loss(x, t), big)


# CC ----------------------------------------------------------------------------------------------


def test_cc_multiplies_the_embedding_gaps_of_neighbouring_samples() -> None:
    e_s, e_t = _randn(4, 3), _randn(4, 3)
    gaps = [
        [abs(a - b) for a, b in zip(rs, rt, strict=True)] for rs, rt in zip(e_s.tolist(), e_t.tolist(), strict=True)
    ]
    expected = sum(_dot(gaps[i], gaps[i + 1]) for i in range(3)) / 3
    assert cc_loss(e_s, e_t).item() == pytest.approx(expected, rel=1e-12)
    assert _gradcheck(lambda x: cc_loss(x, e_t), e_s)


# VID ---------------------------------------------------------------------------------------------


def test_vid_is_the_gaussian_negative_log_likelihood_with_softplus_variances() -> None:
    mean, target, log_scale = _randn(2, 3, 2, 2), _randn(2, 3, 2, 2), _randn(3)
    variances = [math.log(1 + math.exp(v)) + 1e-5 for v in log_scale.tolist()]
    terms = [
        0.5 * ((m - t) ** 2 / variances[c] + math.log(variances[c]))
        for ms, ts in zip(_channels(mean), _channels(target), strict=True)
        for c, (mc, tc) in enumerate(zip(ms, ts, strict=True))
        for m, t in zip(mc, tc, strict=True)
    ]
    assert vid_loss(mean, target, log_scale).item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    assert _gradcheck(lambda m, v: vid_loss(m, target, v), mean, log_scale)


def test_vid_starts_at_the_initial_variance_and_learns_it_unless_told_not_to() -> None:
    loss = VIDLoss(["s"], ["t"], init_variance=5.0)
    loss.build({"s": torch.Size([2, 3, 4, 4])}, {"t": torch.Size([2, 6, 2, 2])})
    (head,) = loss.heads
    variance = torch.nn.functional.softplus(head.log_scale) + loss.eps
    torch.testing.assert_close(variance, torch.full((6,), 5.0))
    assert head.log_scale.requires_grad and head.mean[0].in_channels == 3 and head.mean[-1].out_channels == 6
    frozen = VIDLoss(["s"], ["t"], learn_variance=False)
    frozen.build({"s": torch.Size([2, 3, 4, 4])}, {"t": torch.Size([2, 6, 2, 2])})
    assert not frozen.heads[0].log_scale.requires_grad  # mdistiller's VID


# FSP ---------------------------------------------------------------------------------------------


def _hand_fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> list[list[list[float]]]:
    return [
        [[_dot(t_c, b_c) / len(b_c) for b_c in b_sample] for t_c in t_sample]
        for b_sample, t_sample in zip(_channels(bottom), _channels(top), strict=True)
    ]


def test_fsp_compares_the_flow_matrices_of_consecutive_layers() -> None:
    s = [_randn(2, 2, 4, 4), _randn(2, 3, 2, 2), _randn(2, 2, 2, 2)]
    t = [_randn(2, 2, 4, 4), _randn(2, 3, 2, 2), _randn(2, 2, 2, 2)]
    expected = 0.0
    for i in range(2):
        bottom_s, bottom_t = (_pool2(s[0]), _pool2(t[0])) if i == 0 else (s[i], t[i])
        g_s, g_t = _hand_fsp_matrix(bottom_s, s[i + 1]), _hand_fsp_matrix(bottom_t, t[i + 1])
        flat_s = [v for matrix in g_s for row in matrix for v in row]
        flat_t = [v for matrix in g_t for row in matrix for v in row]
        diffs = [(a - b) ** 2 for a, b in zip(flat_s, flat_t, strict=True)]
        expected += sum(diffs) / len(diffs)
    assert fsp_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert _gradcheck(lambda a, b, c: fsp_loss([a, b, c], t), *s)


# KDSVD -------------------------------------------------------------------------------------------


def _right_singular_vectors(x: torch.Tensor, k: int, sign_of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenvectors of ``XᵀX`` (the right singular vectors) and ``√eigenvalues``, via eigh.

    A singular vector's sign is arbitrary; the one of ``sign_of`` (torch's SVD, which the loss
    uses) is taken, so the hand value follows the same convention.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x)
    order = eigenvalues.argsort(descending=True)[: min(k, *x.shape)]  # a thin SVD has min(rows, cols)
    vectors, values = eigenvectors[:, order], eigenvalues[order].clamp_min(0).sqrt()
    signs = torch.sign((vectors * sign_of[:, : vectors.shape[1]]).sum(dim=0))
    return vectors * signs, values


def _hand_kdsvd(student: list[torch.Tensor], teacher: list[torch.Tensor], k: int) -> float:
    total = 0.0
    for b in range(len(student[0])):
        previous = None
        for f_s, f_t in zip(student, teacher, strict=True):
            x_s = f_s[b].reshape(f_s.shape[1], -1).T  # positions × channels
            x_t = f_t[b].reshape(f_t.shape[1], -1).T
            v_t, sv_t = _right_singular_vectors(x_t, k, torch.linalg.svd(x_t).Vh.T)
            v_s, _ = _right_singular_vectors(x_s, k + 3, torch.linalg.svd(x_s).Vh.T)
            weights = sv_t / sv_t.norm()
            aligned_s = torch.zeros_like(v_t)
            for j in range(k):
                cosines = [float(v_s[:, i] @ v_t[:, j]) for i in range(v_s.shape[1])]
                best = max(range(v_s.shape[1]), key=lambda i: abs(cosines[i]))
                aligned_s[:, j] = math.copysign(1.0, cosines[best]) * v_s[:, best]
            current = (aligned_s * weights, v_t * weights)
            if previous is not None:
                for i in range(current[0].shape[0]):
                    for p in range(previous[0].shape[0]):
                        for j in range(k):
                            rbf_s = math.exp(-((current[0][i, j] - previous[0][p, j]).item() ** 2) / 8)
                            rbf_t = math.exp(-((current[1][i, j] - previous[1][p, j]).item() ** 2) / 8)
                            total += (rbf_s - rbf_t) ** 2
            previous = current
    return total / len(student[0])


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_relates_aligned_singular_vectors_of_consecutive_layers(k: int) -> None:
    s = [_randn(2, 3, 3, 3), _randn(2, 4, 3, 3), _randn(2, 5, 2, 2)]
    t = [_randn(2, 3, 3, 3), _randn(2, 4, 3, 3), _randn(2, 5, 2, 2)]
    assert kdsvd_loss(s, t, k).item() == pytest.approx(_hand_kdsvd(s, t, k), rel=1e-9)
    assert _gradcheck(lambda a, b, c: kdsvd_loss([a, b, c], t, k), *s)


def test_kdsvd_of_mdistiller_factorises_the_channel_rows_by_width() -> None:
    s = [_randn(2, 3, 3, 4), _randn(2, 2, 3, 4)]
    t = [_randn(2, 5, 3, 4), _randn(2, 6, 3, 4)]  # other widths: only the map width must agree
    # The (C·H) × W matrix is the positions × channels matrix of a map with W channels at C·H positions.
    s_rows, t_rows = ([f.reshape(2, -1, 4).transpose(1, 2).unsqueeze(-1) for f in maps] for maps in (s, t))
    assert kdsvd_loss(s, t, 1, "ch_by_w").item() == pytest.approx(_hand_kdsvd(s_rows, t_rows, 1), rel=1e-9)
    assert _gradcheck(lambda a, b: kdsvd_loss([a, b], t, 1, "ch_by_w"), *s)


# AB ----------------------------------------------------------------------------------------------


def _hand_boundary(s: torch.Tensor, t: torch.Tensor, margin: float) -> float:
    total = 0.0
    for a, b in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True):
        if b <= 0 and a > -margin:
            total += (a + margin) ** 2
        if b > 0 and a <= margin:
            total += (a - margin) ** 2
    return total / len(s)


def test_ab_is_the_weighted_hinge_on_activation_boundaries() -> None:
    s = [_randn(3, 2, 2, 2), _randn(3, 2, 2, 2)]
    t = [_randn(3, 2, 2, 2), _randn(3, 2, 2, 2)]
    expected = (0.5 * _hand_boundary(s[0], t[0], 0.5) + _hand_boundary(s[1], t[1], 0.5)) * 3 / 1000
    assert ab_loss(s, t, margin=0.5).item() == pytest.approx(expected, rel=1e-12)
    assert _gradcheck(lambda a, b: ab_loss([a, b], t, 0.5), *s)


# FT ----------------------------------------------------------------------------------------------


def _hand_factor(maps: torch.Tensor) -> list[list[float]]:
    return [
        _unit([sum(c[p] ** 2 for c in sample) / len(sample) for p in range(len(sample[0]))])
        for sample in _channels(maps)
    ]


def test_ft_is_the_l1_distance_of_normalised_factor_maps() -> None:
    s, t = _randn(2, 3, 4, 4), _randn(2, 2, 2, 2)
    f_s, f_t = _hand_factor(_pool2(s)), _hand_factor(t)
    diffs = [abs(a - b) for rs, rt in zip(f_s, f_t, strict=True) for a, b in zip(rs, rt, strict=True)]
    assert ft_loss(s, t).item() == pytest.approx(sum(diffs) / len(diffs), rel=1e-12)
    assert _gradcheck(lambda x: ft_loss(x, t), s)


# Initialisation stages ---------------------------------------------------------------------------

SHAPES = {"s": torch.Size([4, 2, 4, 4])}, {"t": torch.Size([4, 4, 4, 4])}


def _pair(seed: int) -> tuple[ModelOutputs, ModelOutputs]:
    gen = torch.Generator().manual_seed(seed)
    student = ModelOutputs(
        torch.randn(4, 3, generator=gen), {"s": torch.randn(4, 2, 4, 4, generator=gen).requires_grad_()}
    )
    teacher = ModelOutputs(torch.randn(4, 3, generator=gen), {"t": torch.randn(4, 4, 4, 4, generator=gen)})
    return student, teacher


@pytest.mark.parametrize("loss", [ABLoss(["s"], ["t"], init_epochs=2), FSPLoss(["s", "s"], ["t", "t"], init_epochs=2)])
def test_ab_and_fsp_train_alone_in_their_initialisation_stage_then_stop(loss) -> None:
    if isinstance(loss, FSPLoss):
        with pytest.raises(ValueError, match="equal width"):
            loss.build(*SHAPES)
        loss.build({"s": SHAPES[0]["s"]}, {"t": SHAPES[0]["s"]})
        student, teacher = _pair(0)
        teacher = ModelOutputs(teacher.logits, {"t": teacher.features["t"][:, :2]})
    else:
        loss.build(*SHAPES)
        student, teacher = _pair(0)
    assert [loss.trains_alone(e) for e in range(4)] == [True, True, False, False]
    during = loss(student, teacher, StepContext(torch.zeros(4), epoch=1))
    during.backward()
    assert during.item() > 0 and student.features["s"].grad.abs().sum() > 0
    assert loss(student, teacher, StepContext(torch.zeros(4), epoch=2)).item() == 0.0


def test_ft_trains_its_paraphraser_first_then_keeps_it_fixed() -> None:
    loss = FTLoss(["s"], ["t"], init_epochs=1, reconstruction_weight=0.5)
    torch.manual_seed(0)
    loss.build(*SHAPES)
    student, teacher = _pair(1)
    t = teacher.features["t"]
    stage_one = loss(student, teacher, StepContext(torch.zeros(4), epoch=0))
    reconstruction = loss.paraphraser.decoder(loss.paraphraser.encoder(t))
    torch.testing.assert_close(stage_one, 0.5 * (reconstruction - t).pow(2).mean())
    stage_one.backward()
    assert all(p.grad is not None for p in loss.paraphraser.parameters())
    assert all(p.grad is None for p in loss.translator.parameters()) and student.features["s"].grad is None
    loss.zero_grad(set_to_none=True)
    stage_two = loss(student, teacher, StepContext(torch.zeros(4), epoch=1))
    with torch.no_grad():
        expected = ft_loss(loss.translator(student.features["s"]), loss.paraphraser.encoder(t))
    torch.testing.assert_close(stage_two, expected)
    stage_two.backward()
    assert all(p.grad is None for p in loss.paraphraser.parameters())
    assert all(p.grad is not None for p in loss.translator.parameters())
    assert loss.paraphraser.encoder[-2].out_channels == 2 and loss.translator[0].in_channels == 2
