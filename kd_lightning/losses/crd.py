"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.outputs import ModelOutputs

_EPS = 1e-7


def nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """The NCE objective of CRD (Tian et al. 2020, Eq. 18, the bound of Eqs. 9-10).

    ``scores[:, 0]`` is the (normalised) score ``h`` of the positive pair and ``scores[:, 1:]``
    the scores of ``K`` negatives drawn uniformly from ``num_data`` samples; with noise
    probability ``P_n = 1/N`` the loss is
    ``−E[log h⁺/(h⁺ + K·P_n)] − K·E[log K·P_n/(h⁻ + K·P_n)]``, summed over the negatives and
    averaged over the batch.
    """
    k = scores.shape[1] - 1
    noise = k / num_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + _EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + _EPS))
    return -(positive.sum() + negative.sum()) / len(scores)


def contrast_scores(anchor: torch.Tensor, contrast: torch.Tensor, temperature: float) -> torch.Tensor:
    """``exp(⟨v, m_j⟩ / τ)`` for each anchor embedding ``v`` ``[B, D]`` and its ``[B, K+1, D]`` contrast set."""
    return torch.exp(torch.bmm(contrast, anchor.unsqueeze(2)).squeeze(2) / temperature)


def crd_loss(
    student_embedding: torch.Tensor,
    teacher_embedding: torch.Tensor,
    student_contrast: torch.Tensor,
    teacher_contrast: torch.Tensor,
    normalisers: tuple[float, float],
    num_data: int,
    temperature: float = 0.07,
) -> torch.Tensor:
    """CRD's symmetric loss: each network's embedding against the other's memory (Eq. 18).

    Args:
        student_embedding: ``[B, D]`` L2-normalised student embedding ``g^S(s)``.
        teacher_embedding: ``[B, D]`` L2-normalised teacher embedding ``g^T(t)``.
        student_contrast: ``[B, K+1, D]`` student memory rows (positive first) that the teacher
            embedding is contrasted with.
        teacher_contrast: ``[B, K+1, D]`` teacher memory rows the student embedding is contrasted with.
        normalisers: ``(Z_s, Z_t)``, the constants that turn ``exp(·/τ)`` into densities
            (``h = exp(·/τ)/Z``; the paper estimates ``Z`` once, from the first batch).
        num_data: ``N``, the size of the memory bank.
        temperature: ``τ`` (0.07 in the paper).
    """
    z_s, z_t = normalisers
    s_scores = contrast_scores(full_precision(student_embedding), full_precision(teacher_contrast), temperature)
    t_scores = contrast_scores(full_precision(teacher_embedding), full_precision(student_contrast), temperature)
    return nce_loss(s_scores / z_s, num_data) + nce_loss(t_scores / z_t, num_data)


class Embed(nn.Module):
    """CRD's projection head ``g``: a linear map to ``feat_dim`` followed by L2 normalisation."""

    def __init__(self, in_features: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@register_loss("crd")
class CRDLoss(DistillationLoss):
    """CRD with its momentum memory bank of ``num_samples`` embeddings per network.

    Each training step contrasts the batch with ``num_negatives`` memory rows drawn uniformly
    at random (the paper's setting; RepDistiller's default additionally excludes same-class
    rows), then moves the rows of the batch's samples towards the new embeddings:
    ``m ← normalise(momentum·m + (1 − momentum)·v)``. The bank is addressed by dataset index,
    so the training set must give batches ``(x, y, index)`` (``return_indices: true`` on the
    DataModule). Bank and normalisers are buffers: they are saved with checkpoints so a resumed
    run continues with the same memory.

    Args:
        num_samples: size of the training set (indices must lie in ``[0, num_samples)``).
        student_layers: the student layer embedded (``backbone`` = pooled features).
        teacher_layers: the teacher layer embedded.
        feat_dim: embedding width (128).
        num_negatives: ``K`` negatives per sample (16384).
        temperature: ``τ`` (0.07).
        momentum: memory update momentum (0.5).
    """

    needs_indices = True

    def __init__(
        self,
        num_samples: int,
        student_layers: Sequence[str] = ("backbone",),
        teacher_layers: Sequence[str] = ("backbone",),
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        if len(student_layers) != 1:
            raise ValueError(f"CRD embeds one layer per network, got student_layers={list(student_layers)}")
        if num_samples < 2 or num_negatives < 1:
            raise ValueError(f"need num_samples >= 2 and num_negatives >= 1, got {num_samples}, {num_negatives}")
        self.set_layers(student_layers, teacher_layers)
        self.num_samples, self.feat_dim = num_samples, feat_dim
        self.num_negatives, self.temperature, self.momentum = num_negatives, temperature, momentum
        # Uniform in ±1/sqrt(D/3): unit-variance rows, as in the reference initialisation.
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("student_memory", torch.rand(num_samples, feat_dim) * 2 * bound - bound)
        self.register_buffer("teacher_memory", torch.rand(num_samples, feat_dim) * 2 * bound - bound)
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        self.student_embed: nn.Module = nn.Identity()
        self.teacher_embed: nn.Module = nn.Identity()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_dim = math.prod(student_shapes[self.student_layers[0]][1:])
        t_dim = math.prod(teacher_shapes[self.teacher_layers[0]][1:])
        self.student_embed, self.teacher_embed = Embed(s_dim, self.feat_dim), Embed(t_dim, self.feat_dim)

    def forward(
        self,
        student: ModelOutputs,
        teacher: ModelOutputs,
        targets: torch.Tensor,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if indices is None:
            raise ValueError(
                "CRD needs the dataset index of each training sample: set `return_indices: true` on the DataModule"
            )
        if int(indices.max()) >= self.num_samples:
            raise ValueError(f"sample index {int(indices.max())} is outside CRD's memory of {self.num_samples}")
        ((s_feat, t_feat),) = self.feature_pairs(student, teacher)
        v_s, v_t = self.student_embed(s_feat), self.teacher_embed(t_feat)
        contrast_idx = torch.randint(self.num_samples, (len(indices), self.num_negatives + 1), device=indices.device)
        contrast_idx[:, 0] = indices
        student_contrast = self.student_memory[contrast_idx].detach()
        teacher_contrast = self.teacher_memory[contrast_idx].detach()
        if self.normalisers[0] < 0:
            self._estimate_normalisers(v_s, v_t, student_contrast, teacher_contrast)
        z_s, z_t = self.normalisers.tolist()
        loss = crd_loss(v_s, v_t, student_contrast, teacher_contrast, (z_s, z_t), self.num_samples, self.temperature)
        if self.training:
            self._update_memory(indices, v_s.detach(), v_t.detach())
        return loss

    @torch.no_grad()
    def _estimate_normalisers(self, v_s, v_t, student_contrast, teacher_contrast) -> None:
        """``Z = N · mean(exp(·/τ))`` over the first batch, then fixed (Wu et al. 2018's estimate)."""
        z_s = contrast_scores(v_s.float(), teacher_contrast.float(), self.temperature).mean() * self.num_samples
        z_t = contrast_scores(v_t.float(), student_contrast.float(), self.temperature).mean() * self.num_samples
        self.normalisers.copy_(torch.stack([z_s, z_t]))

    @torch.no_grad()
    def _update_memory(self, indices: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        for memory, v in ((self.student_memory, v_s), (self.teacher_memory, v_t)):
            rows = memory[indices] * self.momentum + v.to(memory.dtype) * (1 - self.momentum)
            memory[indices] = F.normalize(rows, dim=1)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, feat_dim={self.feat_dim}, num_negatives={self.num_negatives}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )
