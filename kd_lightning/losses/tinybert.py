"""TinyBERT's transformer losses (Jiao et al., 2020): hidden-state and attention-score MSE over real tokens.

Both are registered terms over tapped layers: ``hidden_mse`` compares a block's output states;
``attention_mse`` taps a block's query and key projections and rebuilds the pre-softmax scores
``QKᵀ/√d`` TinyBERT matches, since a Hugging Face encoder returns only the probabilities (and those
only under eager attention, after dropout), never the scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.models.feature_taps import resolve_module
from kd_lightning.outputs import ModelOutputs


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
    """``mean‖H_S Wᵀ + b − H_T‖²`` over the real tokens (TinyBERT's hidden-state loss, Eq. 8).

    The learned map ``W`` (``[D_T, D_S]``) lets a narrow student match a wide teacher; without it
    the widths must agree. Padding positions would otherwise teach the student to copy the
    teacher's arbitrary states at tokens no prediction reads.

    Args:
        student: ``[B, L, D_S]`` hidden states of one student layer (or ``[B, D_S]`` pooled ones).
        teacher: ``[B, L, D_T]`` hidden states of the teacher layer it mimics.
        weight, bias: the linear map from student to teacher width (``None``: identity).
        mask: ``[B, L]`` 1 at real tokens, 0 at padding (``None``: every position).
    """
    projected = student if weight is None else F.linear(student, weight, bias)
    if projected.shape != teacher.shape:
        raise ValueError(f"student states {tuple(projected.shape)} do not match the teacher's {tuple(teacher.shape)}")
    return _token_mean((projected - teacher).pow(2), mask)


def attention_scores(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, h, L, L]`` pre-softmax attention scores ``Q_i K_iᵀ / √d`` of each head ``i`` (``d`` its width).

    What a BERT layer adds its mask to before the softmax. TinyBERT matches these rather than the
    probabilities: the authors found the unnormalised scores converge faster and distil better.

    Args:
        query: ``[B, L, D]`` output of a layer's query projection, ``D = heads × d``.
        key: ``[B, L, D]`` output of the same layer's key projection.
        heads: attention heads the projections are split into, as the layer splits them.
    """
    if query.dim() != 3 or key.shape != query.shape or query.shape[-1] % heads:
        raise ValueError(
            f"query {tuple(query.shape)} and key {tuple(key.shape)} must be [B, L, D] of one shape with D a "
            f"multiple of the {heads} heads"
        )
    batch, length, width = query.shape
    d = width // heads
    q = query.view(batch, length, heads, d).transpose(1, 2)
    k = key.view(batch, length, heads, d).transpose(1, 2)
    return q @ k.transpose(-1, -2) / math.sqrt(d)


def attention_map_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/h) Σᵢ MSE(A_iˢ, A_iᵀ)`` over the query-key pairs of real tokens (TinyBERT's attention loss, Eq. 7).

    TinyBERT matches the attention scores head by head, so student and teacher need the same
    number of heads. Pairs that involve padding are left out: the authors' code zeroes the masked
    keys' scores and averages over every entry, padded queries included, so there the loss shrinks
    as a batch is padded longer; here padding changes nothing.

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


@register_loss("hidden_mse")
class HiddenStateLoss(DistillationLoss):
    """TinyBERT's hidden-state loss per tapped layer pair, each through its own learned linear map.

    Per-token states ``[B, L, D]`` (a transformer layer's output, the embeddings) are compared
    over the batch's real tokens (:attr:`StepContext.token_mask`); pooled ``[B, D]`` vectors
    (``backbone``) over the samples. TinyBERT maps every student layer ``m`` to teacher layer
    ``g(m)``, e.g. a 2-layer student of a 4-layer BERT::

        losses:
          - {name: kd, weight: 1.0}
          - name: hidden_mse
            weight: 1.0
            kwargs: {student_layers: [stage:0, stage:1], teacher_layers: [stage:1, stage:3]}

    Args:
        student_layers: student layers whose outputs are matched (e.g. ``[stage:-1]``, ``[embed]``).
        teacher_layers: teacher layers they must reproduce (e.g. ``[stage:-1]``, ``[model.embeddings]``).
        project: map each student layer to its teacher's width with a learned linear layer
            (TinyBERT's ``W_h``); ``False`` compares the states directly, so the widths must agree.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("stage:-1",),
        teacher_layers: Sequence[str] = ("stage:-1",),
        project: bool = True,
    ) -> None:
        super().__init__()
        self.set_layers(student_layers, teacher_layers)
        self.project = project
        self.projections = nn.ModuleList()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        maps = []
        for s, t in zip(self.student_layers, self.teacher_layers, strict=True):
            student, teacher = student_shapes[s], teacher_shapes[t]
            if len(student) != len(teacher):
                raise ValueError(
                    f"hidden_mse compares student layer {s!r} {tuple(student[1:])} with teacher layer {t!r} "
                    f"{tuple(teacher[1:])}: pair per-token states with per-token states, pooled vectors with pooled"
                )
            if not self.project and student[-1] != teacher[-1]:
                raise ValueError(
                    f"hidden_mse without project compares widths {student[-1]} ({s!r}) and {teacher[-1]} ({t!r}) "
                    "directly: pick layers of one width or set project: true"
                )
            maps.append(nn.Linear(student[-1], teacher[-1]))
        if self.project:
            self.projections = nn.ModuleList(maps)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if self.project and len(self.projections) != len(self.student_layers):
            raise RuntimeError("HiddenStateLoss.build() was not called: its maps need the probed feature widths")
        pairs = self.feature_pairs(student, teacher)
        maps = [cast(nn.Linear, m) for m in self.projections] if self.project else [None] * len(pairs)
        terms = []
        for (s, t), projection in zip(pairs, maps, strict=True):
            mask = context.token_mask if s.dim() == 3 else None
            weight, bias = (None, None) if projection is None else (projection.weight, projection.bias)
            with autocast_off(s):
                terms.append(hidden_state_mse(full_precision(s), full_precision(t), weight, bias, mask))
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f"project={self.project}"


# Where attention modules declare their head count: BERT's self-attention, DistilBERT's, torch's own.
_HEAD_ATTRIBUTES = ("num_attention_heads", "n_heads", "num_heads")


def _declared_heads(network: nn.Module, ref: str) -> int | None:
    """The head count declared by the closest module around the projection ``ref`` names (or its config)."""
    found = resolve_module(network, ref)
    if found is None:
        return None
    modules = dict(network.named_modules())
    path = found[0].split(".")
    for end in range(len(path) - 1, -1, -1):
        module = modules[".".join(path[:end])]
        for owner in (module, getattr(module, "config", None)):
            for attribute in _HEAD_ATTRIBUTES:
                value = getattr(owner, attribute, None)
                if isinstance(value, int):
                    return value
    return None


@register_loss("attention_mse")
class AttentionScoreLoss(DistillationLoss):
    """TinyBERT's attention loss per tapped block pair: every head's pre-softmax scores, over real tokens.

    Each named transformer block is tapped at its query and key projections; the scores are
    rebuilt from them (:func:`attention_scores`) and compared over pairs of real tokens
    (:attr:`StepContext.token_mask`, :func:`attention_map_mse`), the layer pairs summed. The head
    counts are read from the networks' attention modules, and student and teacher must agree on
    them; the head widths may differ. TinyBERT's uniform mapping for a 2-layer student of a
    6-layer teacher, beside its hidden-state loss::

        losses:
          - {name: kd, weight: 1.0}
          - name: attention_mse
            weight: 1.0
            kwargs: {student_layers: [stage:0, stage:1], teacher_layers: [stage:2, stage:5]}

    Args:
        student_layers: student transformer blocks (``stage:0``, or a path such as ``model.encoder.layer.0``).
        teacher_layers: teacher blocks whose attention they must reproduce.
        query: path of the query projection inside a block (BERT's; DistilBERT's is ``attention.q_lin``).
        key: path of the key projection inside a block (DistilBERT's is ``attention.k_lin``).
        heads: the head count of both networks where their attention modules declare none.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("stage:-1",),
        teacher_layers: Sequence[str] = ("stage:-1",),
        query: str = "attention.self.query",
        key: str = "attention.self.key",
        heads: int | None = None,
    ) -> None:
        super().__init__()
        if len(student_layers) != len(teacher_layers) or not student_layers:
            raise ValueError(
                f"attention_mse pairs student and teacher blocks one to one; got student_layers="
                f"{list(student_layers)} and teacher_layers={list(teacher_layers)}"
            )
        if heads is not None and heads < 1:
            raise ValueError(f"attention_mse heads must be >= 1, got {heads}")
        self.blocks = (tuple(student_layers), tuple(teacher_layers))
        self.query, self.key, self.heads = query, key, heads
        self.set_layers(
            [f"{block}.{part}" for block in student_layers for part in (query, key)],
            [f"{block}.{part}" for block in teacher_layers for part in (query, key)],
        )
        self.student_heads: list[int | None] = [heads] * len(student_layers)
        self.teacher_heads: list[int | None] = [heads] * len(teacher_layers)

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for role, shapes, layers in (
            ("student", student_shapes, self.student_layers),
            ("teacher", teacher_shapes, self.teacher_layers),
        ):
            for query, key in zip(layers[::2], layers[1::2], strict=True):
                if len(shapes[query]) != 3 or shapes[query] != shapes[key]:
                    raise ValueError(
                        f"attention_mse reads per-token query and key projections, but {role} layers {query!r} "
                        f"{tuple(shapes[query][1:])} and {key!r} {tuple(shapes[key][1:])} are not: set query and "
                        "key to the blocks' projections"
                    )

    def bind_student(self, student: nn.Module) -> None:
        self.student_heads = [self._heads_of(student, "student", ref) for ref in self.student_layers[::2]]
        self._check_heads()

    def bind_teacher(self, teacher: nn.Module) -> None:
        self.teacher_heads = [self._heads_of(teacher, "teacher", ref) for ref in self.teacher_layers[::2]]
        self._check_heads()

    def _heads_of(self, network: nn.Module, role: str, ref: str) -> int:
        declared = _declared_heads(network, ref)
        if declared is None and self.heads is None:
            raise ValueError(
                f"attention_mse cannot read the head count of {role} layer {ref!r}: give it as kwargs heads"
            )
        if declared is not None and self.heads is not None and declared != self.heads:
            raise ValueError(
                f"attention_mse has heads: {self.heads}, but {role} layer {ref!r} declares {declared}: drop heads"
            )
        return cast(int, declared if declared is not None else self.heads)

    def _check_heads(self) -> None:
        pairs = zip(*self.blocks, self.student_heads, self.teacher_heads, strict=True)
        for student, teacher, student_heads, teacher_heads in pairs:
            if None not in (student_heads, teacher_heads) and student_heads != teacher_heads:
                raise ValueError(
                    f"attention_mse matches attention head by head, but student layer {student!r} has "
                    f"{student_heads} heads and teacher layer {teacher!r} {teacher_heads}: give the student "
                    f"{teacher_heads} heads"
                )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if None in self.student_heads or None in self.teacher_heads:
            raise RuntimeError("AttentionScoreLoss needs its head counts: bind_student/bind_teacher read them")
        pairs = self.feature_pairs(student, teacher)
        terms = []
        for index, ((sq, tq), (sk, tk)) in enumerate(zip(pairs[::2], pairs[1::2], strict=True)):
            with autocast_off(sq):
                s = attention_scores(full_precision(sq), full_precision(sk), cast(int, self.student_heads[index]))
                t = attention_scores(full_precision(tq), full_precision(tk), cast(int, self.teacher_heads[index]))
                terms.append(attention_map_mse(s, t, context.token_mask))
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return f"query={self.query!r}, key={self.key!r}, heads={self.heads}"
