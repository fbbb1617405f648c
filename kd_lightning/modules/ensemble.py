"""Several frozen teachers teaching one student, and how their signals are combined.

``mean_logits`` averages the teachers' logits into one teacher; the others keep each teacher's logits
(as ``ensemble.<k>`` entries of the outputs' features, so the teacher cache stores them like tapped
layers) and combine per-teacher losses: ``mean_loss`` averages every term over the teachers, ``ebkd``
and ``camkd`` weight each teacher's per-sample KD term, as the reference code of CA-MKD
(Rorozhl/CA-MKD, ``helper/loops.py``) does for both methods, and ``aekd`` weights each teacher's
term by the least-norm point of their gradients (:mod:`kd_lightning.modules.aekd`), as it does for AEKD.
Layers a loss taps (CA-MKD's feature term) are tapped on every teacher and travel as
``ensemble.<k>/<layer>`` (:func:`kd_lightning.outputs.member_outputs` reads both back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.errors import ConfigError, KDLightningError
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.models.spec import ModelSpec
from kd_lightning.modules.teacher import FrozenTeacher
from kd_lightning.outputs import ModelOutputs, member_name

MEAN_LOGITS = "mean_logits"
MEAN_LOSS = "mean_loss"
EBKD = "ebkd"
CAMKD = "camkd"
AEKD = "aekd"
ENSEMBLES = (MEAN_LOGITS, MEAN_LOSS, EBKD, CAMKD, AEKD)
# The ensembles that weight each teacher's per-sample KD term (so they need the KD term and only it).
SAMPLE_WEIGHTED = (EBKD, CAMKD)


def check_ensemble(ensemble: str) -> None:
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"teacher_options.ensemble must be one of {list(ENSEMBLES)}, got {ensemble!r}")


class TeacherEnsemble(nn.Module):
    """Frozen teachers called as one: the mean logits, and each teacher's logits unless ``ensemble`` averages them.

    Each member is a :class:`FrozenTeacher` (frozen, hashed, recalibrated like a lone teacher).

    Args:
        specs: the teachers' networks and weights.
        num_classes: classes of the task; a teacher with another head is refused, by name.
        ensemble: one of :data:`ENSEMBLES`.
    """

    taps = None  # the members hold their taps: the ensemble's features are named per member

    def __init__(self, specs: Sequence[ModelSpec], num_classes: int, ensemble: str) -> None:
        super().__init__()
        check_ensemble(ensemble)
        members = []
        for k, spec in enumerate(specs):
            try:
                members.append(FrozenTeacher(spec, num_classes))
            except KDLightningError as error:
                raise type(error)(f"teacher {k} ({spec.name!r}): {error}") from error
        self.teachers = nn.ModuleList(members)
        self.ensemble = ensemble

    @property
    def network(self) -> nn.ModuleList:
        """The members' networks, moved to a device together (the teacher cache's use)."""
        return nn.ModuleList(self.members())

    def members(self) -> list[FrozenTeacher]:
        return list(self.teachers)  # type: ignore[arg-type]  # a ModuleList of them

    @property
    def recorded_scores(self) -> dict[str, float]:
        return {}

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)

    def tap(self, layers: Sequence[str], sample: torch.Tensor) -> dict[str, torch.Size]:
        """Record ``layers`` of every member from now on; their probed shapes, named per member."""
        return {
            member_name(k, layer): shape
            for k, teacher in enumerate(self.members())
            for layer, shape in teacher.tap(layers, sample).items()
        }

    @property
    def tapped(self) -> bool:
        """Whether the members record layers (which the outputs then carry per member)."""
        return any(teacher.taps is not None and teacher.taps.layers for teacher in self.members())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> ModelOutputs:
        outputs = [teacher(x) for teacher in self.members()]
        mean = torch.stack([out.logits for out in outputs]).mean(0)
        features = {member_name(k, layer): t for k, out in enumerate(outputs) for layer, t in out.features.items()}
        if self.ensemble != MEAN_LOGITS:
            features |= {member_name(k): out.logits for k, out in enumerate(outputs)}
        return ModelOutputs(mean, features)

    def state_names(self, prefix: str) -> list[str]:
        return [prefix + name for name in self.state_dict()]

    def fingerprint(self) -> dict[str, Any]:
        return {"teachers": [teacher.fingerprint() for teacher in self.members()]}

    def verify(self, fingerprint: dict[str, Any]) -> None:
        for teacher, recorded in zip(self.members(), fingerprint["teachers"], strict=True):
            teacher.verify(recorded)

    def recalibrate_batchnorm(self, batches: Iterable[torch.Tensor]) -> int:
        """Recompute every member's BatchNorm statistics over the same training ``batches``."""
        batches = list(batches)
        return min(teacher.recalibrate_batchnorm(batches) for teacher in self.members())

    def rehash(self) -> None:
        for teacher in self.members():
            teacher.rehash()


def ebkd_weights(teacher_logits: torch.Tensor) -> torch.Tensor:
    """``[K, B]`` entropy-based weights (Kwon et al., 2020): ``1 − H_k / Σ_j H_j`` per sample, at temperature 1.

    A confident (low-entropy) teacher weighs more; the weights sum to ``K − 1`` per sample.
    """
    p = teacher_logits.softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    return 1.0 - entropy / entropy.sum(0, keepdim=True)


def camkd_weights(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[K, B]`` confidence-aware weights (CA-MKD, Zhang et al., 2022): ``(1 − softmax_k(CE_k)) / (K − 1)``.

    ``CE_k`` is teacher ``k``'s cross-entropy with the label, so a teacher that predicts the label
    better weighs more; the weights sum to 1 per sample.
    """
    num_teachers = teacher_logits.shape[0]
    ce = torch.stack([F.cross_entropy(t, labels, reduction="none") for t in teacher_logits])
    return (1.0 - ce.softmax(0)) / (num_teachers - 1)


def weighted_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``Σ_k Σ_b w_kb · T² · KL(p_kb ‖ q_b) / (B · K)``: per-sample KD weighted per teacher.

    The division by ``K`` besides ``B`` is the reference code's (both EBKD and CA-MKD there).
    """
    num_teachers, batch = teacher_logits.shape[:2]
    with autocast_off(student_logits):
        s, t = full_precision(student_logits), full_precision(teacher_logits)
        log_q = F.log_softmax(s / temperature, dim=-1)
        log_p = F.log_softmax(t / temperature, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2
    return (weights.to(kl.dtype) * kl).sum() / (batch * num_teachers)


def sample_weights(ensemble: str, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ``[K, B]`` weights of a :data:`SAMPLE_WEIGHTED` ensemble."""
    t = full_precision(teacher_logits)
    return ebkd_weights(t) if ensemble == EBKD else camkd_weights(t, labels)
