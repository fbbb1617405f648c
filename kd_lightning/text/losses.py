"""Transformer feature losses: TinyBERT's hidden-state and attention-map MSE, over real tokens only.

Pure functions of tensors (tested against hand-computed values) behind thin modules that hold
the learned projection; they are not yet registered as distillation terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _token_mean(squared: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``squared`` over its last dimension, then over the positions ``weights`` keeps."""
    per_position = squared.mean(dim=-1)
    if weights is None:
        return per_position.mean()
    weights = weights.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def hidden_state_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean‖H_S Wᵀ + b − H_T‖²`` over the real tokens (TinyBERT's hidden-state loss, Jiao et al., 2020).

    The learned map ``W`` (``[D_T, D_S]``) lets a narrow student match a wide teacher; without it
    the widths must agree. Padding positions would otherwise teach the student to copy the
    teacher's arbitrary states at tokens no prediction reads.

    Args:
        student: ``[B, L, D_S]`` hidden states of one student layer.
        teacher: ``[B, L, D_T]`` hidden states of the teacher layer it mimics.
        weight, bias: the linear map from student to teacher width (``None``: identity).
        mask: ``[B, L]`` 1 at real tokens, 0 at padding (``None``: every position).
    """
    projected = student if weight is None else F.linear(student, weight, bias)
    if projected.shape != teacher.shape:
        raise ValueError(f"student states {tuple(projected.shape)} do not match the teacher's {tuple(teacher.shape)}")
    return _token_mean((projected - teacher).pow(2), mask)


def attention_map_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/h) Σᵢ MSE(A_iˢ, A_iᵀ)`` over the query-key pairs of real tokens (TinyBERT's attention loss).

    TinyBERT matches the attention scores head by head, so student and teacher need the same
    number of heads; pairs that involve padding are left out (their scores are masked anyway).

    Args:
        student: ``[B, h, L, L]`` attention maps of one student layer.
        teacher: ``[B, h, L, L]`` attention maps of the teacher layer it mimics.
        mask: ``[B, L]`` 1 at real tokens, 0 at padding (``None``: every pair).
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"attention maps {tuple(student.shape)} and {tuple(teacher.shape)} differ: TinyBERT's loss needs "
            "the same heads and length in student and teacher"
        )
    squared = (student - teacher).pow(2)  # [B, h, L, L]
    if mask is None:
        return squared.mean()
    pairs = (mask[:, None, :, None] * mask[:, None, None, :]).to(squared.dtype).expand_as(squared)
    return (squared * pairs).sum() / pairs.sum().clamp(min=1.0)


class HiddenStateMSE(nn.Module):
    """:func:`hidden_state_mse` with its learned ``student_dim → teacher_dim`` map (trained with the student)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(student_dim, teacher_dim)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return hidden_state_mse(student, teacher, self.projection.weight, self.projection.bias, mask)


class AttentionMapMSE(nn.Module):
    """:func:`attention_map_mse` as a module (no parameters), for symmetry with :class:`HiddenStateMSE`."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return attention_map_mse(student, teacher, mask)
