"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kd_lightning._distributed import world_size
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
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
    """``exp(⟨v, m_j⟩ / τ)`` for each anchor embedding ``v`` ``[B, D]`` and its ``[B, K+1, D]`` contrast set.

    In float32 at least, autocast or not: ``1/τ ≈ 14`` turns a half-precision rounding of the dot
    product into a few per cent of the score.
    """
    with autocast_off(anchor):
        scores = torch.bmm(full_precision(contrast), full_precision(anchor).unsqueeze(2)).squeeze(2)
        return torch.exp(scores / temperature)


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
    s_scores = contrast_scores(student_embedding, teacher_contrast, temperature)
    t_scores = contrast_scores(teacher_embedding, student_contrast, temperature)
    return nce_loss(s_scores / z_s, num_data) + nce_loss(t_scores / z_t, num_data)


class Embed(nn.Module):
    """CRD's projection head ``g``: a linear map to ``feat_dim`` followed by L2 normalisation."""

    def __init__(self, in_features: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


NegativeSampling = Literal["uniform", "other_classes"]


@register_loss("crd")
class CRDLoss(DistillationLoss):
    """CRD with its momentum memory bank of one embedding per training sample and network.

    Each training step contrasts the batch with ``num_negatives`` memory rows, then moves the
    rows of the batch's samples towards the new embeddings:
    ``m ← normalise(momentum·m + (1 − momentum)·v)``. The positive is always the sample's own
    row (RepDistiller's ``mode='exact'``). Negatives are drawn

    - ``uniform``: uniformly from all rows, with replacement (the paper's description and
      RepDistiller's sampler when no indices are given; a draw may hit the positive's class);
    - ``other_classes``: uniformly from the rows of *other* classes, without replacement unless
      ``num_negatives`` exceeds the smallest such pool (RepDistiller's and mdistiller's default
      CIFAR-100 data loader, ``CIFAR100InstanceSample``; their published numbers use it).

    The bank is addressed by the context's dataset indices, so the DataModule must hand them out
    (``return_indices: true``). Its size follows the training set: the distiller passes the
    training labels in before fitting (:meth:`bind_training_labels`), which also gives
    ``other_classes`` its class pools. Bank and normalisers are buffers, saved with checkpoints,
    so a resumed run continues with the same memory. Under DDP every rank keeps the whole memory
    and applies the rows of all ranks' batches.

    Args:
        num_samples: rows of the memory; leave unset to take the training set's size (a given
            value must equal it). Needed only when the loss is used without a DataModule.
        student_layers: the student layer embedded (``backbone`` = pooled features).
        teacher_layers: the teacher layer embedded.
        feat_dim: embedding width (128).
        num_negatives: ``K`` negatives per sample (16384).
        temperature: ``τ`` (0.07).
        momentum: memory update momentum (0.5).
        negative_sampling: ``uniform`` or ``other_classes`` (see above).
    """

    # Buffers (registered in __init__), declared so the type checker knows they are tensors.
    student_memory: torch.Tensor
    teacher_memory: torch.Tensor
    normalisers: torch.Tensor

    def __init__(
        self,
        num_samples: int | None = None,
        student_layers: Sequence[str] = ("backbone",),
        teacher_layers: Sequence[str] = ("backbone",),
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negative_sampling: NegativeSampling = "uniform",
    ) -> None:
        super().__init__()
        if len(student_layers) != 1:
            raise ValueError(f"CRD embeds one layer per network, got student_layers={list(student_layers)}")
        if (num_samples is not None and num_samples < 2) or num_negatives < 1:
            raise ValueError(f"need num_samples >= 2 and num_negatives >= 1, got {num_samples}, {num_negatives}")
        if negative_sampling not in ("uniform", "other_classes"):
            raise ValueError(f"negative_sampling must be 'uniform' or 'other_classes', got {negative_sampling!r}")
        self.set_layers(student_layers, teacher_layers)
        self.configured_num_samples = num_samples
        # Class-excluding negatives need every training sample's class: no unlabeled transfer set.
        self.needs_labels = negative_sampling == "other_classes"
        self.feat_dim, self.num_negatives, self.negative_sampling = feat_dim, num_negatives, negative_sampling
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("student_memory", torch.empty(0, feat_dim))
        self.register_buffer("teacher_memory", torch.empty(0, feat_dim))
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        # Labels of the memory rows (for other_classes); derived from the data, not checkpointed.
        self.register_buffer("memory_labels", torch.empty(0, dtype=torch.long), persistent=False)
        self.negatives_with_replacement = False
        if num_samples is not None:
            self._allocate(num_samples)
        self.student_embed: nn.Module = nn.Identity()
        self.teacher_embed: nn.Module = nn.Identity()

    @property
    def num_samples(self) -> int:
        """Rows of the memory bank (0 until it is sized)."""
        return len(self.student_memory)

    def _allocate(self, num_samples: int) -> None:
        # Uniform in ±1/sqrt(D/3): unit-variance rows, as in the reference initialisation.
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        device = self.student_memory.device
        for name in ("student_memory", "teacher_memory"):
            setattr(self, name, (torch.rand(num_samples, self.feat_dim, device=device) * 2 - 1) * bound)

    def bind_training_labels(self, labels: torch.Tensor) -> None:
        n = len(labels)
        if self.configured_num_samples is not None and self.configured_num_samples != n:
            raise ValueError(
                f"CRD's num_samples={self.configured_num_samples} but the training set has {n} images: "
                "leave num_samples unset and the memory takes the training set's size"
            )
        if self.num_samples != n:
            self._allocate(n)
        self.memory_labels = labels.to(self.student_memory.device, torch.long)
        if self.negative_sampling == "other_classes":
            pool = n - int(torch.bincount(self.memory_labels).max())
            if pool == 0:
                raise ValueError("CRD's other_classes negatives need a training set with at least two classes")
            # As the references: without replacement unless K exceeds the pool.
            self.negatives_with_replacement = self.num_negatives > pool

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_dim = math.prod(student_shapes[self.student_layers[0]][1:])
        t_dim = math.prod(teacher_shapes[self.teacher_layers[0]][1:])
        self.student_embed, self.teacher_embed = Embed(s_dim, self.feat_dim), Embed(t_dim, self.feat_dim)

    def contrast_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, K+1]`` memory rows per sample: its own row first, then ``K`` negatives."""
        k = self.num_negatives
        if self.negative_sampling == "uniform":
            negatives = torch.randint(self.num_samples, (len(indices), k), device=indices.device)
        else:
            if len(self.memory_labels) != self.num_samples:
                raise ValueError(
                    "CRD's other_classes negatives need the training labels: train with a DataModule "
                    "(the distiller passes them in) or call bind_training_labels(labels)"
                )
            other_class = self.memory_labels[None, :] != self.memory_labels[indices][:, None]
            if self.negatives_with_replacement:
                negatives = torch.multinomial(other_class.float(), k, replacement=True)
            else:
                # The k largest of i.i.d. uniform keys: a uniform k-subset; same-class rows never win.
                keys = torch.rand(other_class.shape, device=indices.device).masked_fill_(~other_class, -1.0)
                negatives = keys.topk(k, dim=1, sorted=False).indices
        return torch.cat([indices[:, None], negatives], dim=1)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        indices = context.dataset_indices("CRD")
        if self.num_samples == 0:
            raise ValueError(
                "CRD's memory has no size: train with a DataModule (its training set sizes it) or give num_samples"
            )
        if int(indices.max()) >= self.num_samples:
            raise ValueError(f"sample index {int(indices.max())} is outside CRD's memory of {self.num_samples}")
        ((s_feat, t_feat),) = self.feature_pairs(student, teacher)
        v_s, v_t = self.student_embed(s_feat), self.teacher_embed(t_feat)
        contrast_idx = self.contrast_indices(indices)
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
        """``Z = N · mean(exp(·/τ))`` over the first batch, then fixed (Wu et al. 2018's estimate).

        Under DDP the ranks' estimates are averaged, so every rank divides by the same ``Z``.
        """
        z_s = contrast_scores(v_s.float(), teacher_contrast.float(), self.temperature).mean() * self.num_samples
        z_t = contrast_scores(v_t.float(), student_contrast.float(), self.temperature).mean() * self.num_samples
        z = torch.stack([z_s, z_t])
        if world_size() > 1:
            dist.all_reduce(z)
            z /= world_size()
        self.normalisers.copy_(z)

    @torch.no_grad()
    def _update_memory(self, indices: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Move the batch's rows towards the new embeddings; under DDP the rows of every rank's batch.

        Each rank holds the whole memory, and DDP overwrites every rank's buffers with rank 0's at
        each forward: updating only the local rows would lose all but rank 0's updates.
        """
        v_s, v_t = v_s.to(self.student_memory.dtype), v_t.to(self.teacher_memory.dtype)
        if world_size() > 1:
            indices, v_s, v_t = _gather_from_ranks(indices, v_s, v_t)
        for memory, v in ((self.student_memory, v_s), (self.teacher_memory, v_t)):
            rows = memory[indices] * self.momentum + v * (1 - self.momentum)
            memory[indices] = F.normalize(rows, dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A memory sized from the data is rebuilt unsized from the hyper-parameters: take the saved size.
        saved = state_dict.get(prefix + "student_memory")
        if saved is not None and self.configured_num_samples is None and len(saved) != self.num_samples:
            self._allocate(len(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, feat_dim={self.feat_dim}, num_negatives={self.num_negatives}, "
            f"temperature={self.temperature}, momentum={self.momentum}, negative_sampling={self.negative_sampling}"
        )


def _gather_from_ranks(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's rows of each tensor (same leading size within a rank), in rank order.

    Batches may differ in size between ranks (an uneven last batch), so rows are padded to the
    largest batch for ``all_gather`` and trimmed after.
    """
    size = torch.tensor([len(tensors[0])], device=tensors[0].device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(n) for n in sizes]
    gathered = []
    for t in tensors:
        padded = t.new_zeros((max(counts), *t.shape[1:]))
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]))
    return gathered
