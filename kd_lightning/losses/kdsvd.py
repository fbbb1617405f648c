"""Knowledge distillation with singular value decomposition (Lee, Kim & Song, ECCV 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from kd_lightning.losses._feature_maps import check_feature_maps
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs

Matrix = Literal["hw_by_c", "ch_by_w"]


def _finite(x: torch.Tensor) -> torch.Tensor:
    """Non-finite entries as zeros, as the references clean the decomposition's outputs."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def singular_vectors(features: torch.Tensor, k: int, matrix: Matrix = "hw_by_c") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` right singular vectors ``[B, D, k]`` and L2-normalised singular values ``[B, k]``.

    ``matrix`` says which matrix of the ``[B, C, H, W]`` map is factorised: ``hw_by_c`` the
    ``H·W × C`` matrix of the paper and RepDistiller (singular vectors over channels, ``D = C``);
    ``ch_by_w`` the ``C·H × W`` matrix of mdistiller (``D = W``).
    """
    b, c, h, w = features.shape
    x = features.reshape(b, c, h * w).transpose(1, 2) if matrix == "hw_by_c" else features.reshape(b, c * h, w)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = _finite(vh.transpose(1, 2))[:, :, :k]
    return F.normalize(v, dim=1), F.normalize(_finite(s)[:, :k], dim=1)


def _align(student_vectors: torch.Tensor, teacher_vectors: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector of largest ``|cos|``, its sign flipped to match."""
    cosine = student_vectors.transpose(1, 2) @ teacher_vectors
    best = cosine.abs().amax(dim=1, keepdim=True)
    selection = torch.where(cosine.abs() == best, cosine.sign(), torch.zeros_like(cosine))
    return student_vectors @ selection


def _rbf(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``exp(−(v_l − v_{l−1})²/8)`` between every pair of entries of consecutive layers' vectors."""
    return torch.exp(-(current.unsqueeze(2) - previous.unsqueeze(1)).pow(2) / 8)


def kdsvd_loss(
    student_features: Sequence[torch.Tensor],
    teacher_features: Sequence[torch.Tensor],
    k: int = 1,
    matrix: Matrix = "hw_by_c",
) -> torch.Tensor:
    """Squared difference of the RBF-related singular vectors of consecutive layers, summed, per sample.

    As both references compute it: each layer's map is factorised; the teacher keeps its first
    ``k`` right singular vectors, the student its first ``k + 3``, of which the one best aligned
    with each teacher vector is kept (sign-corrected); both are scaled by the teacher's normalised
    singular values; each layer's vectors are related to the previous layer's with a Gaussian
    kernel, and the student's relations are trained towards the teacher's:
    ``Σ_l ‖rbf_S(l, l−1) − rbf_T(l, l−1)‖² / B``, non-finite terms dropped (the paper's Sec. 3:
    sign-aligned singular vectors, related between layers by an RBF kernel).
    """
    if len(student_features) != len(teacher_features) or len(student_features) < 2:
        raise ValueError("KDSVD relates consecutive layers: give the same number (at least two) of each")
    with autocast_off(student_features[0]):
        losses, previous = [], None
        for f_s, f_t in zip(student_features, teacher_features, strict=True):
            v_t, s_t = singular_vectors(full_precision(f_t), k, matrix)
            v_s, _ = singular_vectors(full_precision(f_s), k + 3, matrix)
            if v_s.shape[1] != v_t.shape[1]:
                raise ValueError(
                    f"KDSVD ({matrix}) aligns singular vectors of length {v_s.shape[1]} (student) and "
                    f"{v_t.shape[1]} (teacher): pick layers of equal {'width' if matrix == 'ch_by_w' else 'channels'}"
                )
            v_s = _align(v_s, v_t) * s_t.unsqueeze(1)
            v_t = v_t * s_t.unsqueeze(1)
            if previous is not None:
                squared = (_rbf(v_s, previous[0]) - _rbf(v_t, previous[1]).detach()).pow(2)
                losses.append(_finite(squared).sum())
            previous = (v_s, v_t)
        return torch.stack(losses).sum() / len(student_features[0])


@register_loss("kdsvd")
class KDSVDLoss(DistillationLoss):
    """:func:`kdsvd_loss` over the tapped layers (the three stage outputs on CIFAR).

    Args:
        student_layers: student layers in depth order.
        teacher_layers: teacher layers, each as wide as its student layer.
        k: teacher singular vectors kept (1 in both references).
        matrix: which matrix of each map is factorised (see :func:`singular_vectors`); ``hw_by_c`` is
            the paper's and RepDistiller's, ``ch_by_w`` mdistiller's.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        teacher_layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        k: int = 1,
        matrix: Matrix = "hw_by_c",
    ) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if matrix not in ("hw_by_c", "ch_by_w"):
            raise ValueError(f"matrix must be 'hw_by_c' (RepDistiller) or 'ch_by_w' (mdistiller), got {matrix!r}")
        if len(student_layers) < 2:
            raise ValueError(f"KDSVD relates consecutive layers: give at least two, got {list(student_layers)}")
        self.set_layers(student_layers, teacher_layers)
        self.k, self.matrix = k, matrix

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("KDSVD", student_shapes, self.student_layers)
        check_feature_maps("KDSVD", teacher_shapes, self.teacher_layers)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        pairs = self.feature_pairs(student, teacher)
        return kdsvd_loss([s for s, _ in pairs], [t for _, t in pairs], self.k, self.matrix)

    def extra_repr(self) -> str:
        return f"k={self.k}, matrix={self.matrix}"
