"""The distiller's teacher as one unit: built, frozen, fingerprinted, tapped and kept out of training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from kd_lightning.errors import ConfigError
from kd_lightning.models.batchnorm import recalibrate_batchnorm
from kd_lightning.models.classifier import Classifier
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.models.fingerprint import check_fingerprint, state_dict_sha256
from kd_lightning.models.freezing import freeze
from kd_lightning.models.spec import ModelSpec
from kd_lightning.models.weights import read_weights_file
from kd_lightning.modules.aekd import REFERENCE_MAX_WEIGHT, REFERENCE_TOLERANCE
from kd_lightning.outputs import ModelOutputs


@dataclass(frozen=True)
class TeacherOptions:
    """What the distiller does with its teacher beyond building it from its spec.

    Args:
        recalibrate_bn: when ``fit`` sets up, recompute the teacher's BatchNorm statistics over this many
            training batches (precise BN, :mod:`kd_lightning.models.batchnorm`) before it teaches; 0 keeps
            the checkpoint's. For teachers whose eval mode lags their weights (the
            :class:`~kd_lightning.callbacks.TeacherCheck` warning).
        save_in_checkpoint: also store the teacher's weights in the student's checkpoints, so they resume
            and evaluate without the teacher's file. A recalibrated teacher is always stored: it is no
            longer what its spec rebuilds.
        ensemble: how several teachers (``teacher`` a list of specs) teach: ``mean_logits`` (one teacher
            of averaged logits), ``mean_loss`` (every term averaged over the teachers), ``ebkd`` or ``camkd``
            (the KD term per sample, weighted per teacher: :mod:`kd_lightning.modules.ensemble`), ``aekd`` (each
            term's teachers weighted by the least-norm point of their gradients: :mod:`kd_lightning.modules.aekd`).
        aekd_max_weight: AEKD's cap ``C`` on each teacher's weight, at least ``1 / teachers``; the reference's 0.6.
        aekd_tolerance: the stopping tolerance of AEKD's solver, absolute; the reference's 1e-6, under which
            its weights rarely leave their starting point (see :mod:`kd_lightning.modules.aekd`).
    """

    recalibrate_bn: int = 0
    save_in_checkpoint: bool = False
    ensemble: str = "mean_logits"
    aekd_max_weight: float = REFERENCE_MAX_WEIGHT
    aekd_tolerance: float = REFERENCE_TOLERANCE

    def __post_init__(self) -> None:
        if self.recalibrate_bn < 0:
            raise ConfigError(
                f"teacher_options.recalibrate_bn must be >= 0 (training batches), got {self.recalibrate_bn}"
            )

    @property
    def stored(self) -> bool:
        """Whether the student's checkpoints carry the teacher's weights."""
        return self.save_in_checkpoint or self.recalibrate_bn > 0

    @classmethod
    def of(cls, value: TeacherOptions | dict[str, Any] | None) -> TeacherOptions:
        """Accept options, the dict stored in a checkpoint's hyper-parameters, or ``None`` (the defaults)."""
        if value is None:
            return cls()
        return value if isinstance(value, TeacherOptions) else cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the options can live in a checkpoint loaded with ``weights_only=True``."""
        return asdict(self)


class FrozenTeacher(nn.Module):
    """A trained network that teaches: no gradients, eval mode whatever ``train()`` says, hashed at birth.

    Lightning calls ``.train()`` on the whole LightningModule every epoch; :meth:`train` keeps
    the teacher in eval mode, so its BatchNorm statistics and dropout never change. The SHA-256
    of its weights is taken at construction (before a strategy could shard it) and stored in the
    student's checkpoints, so evaluation can verify it meets the same teacher again.

    Args:
        spec: the teacher's network and weights (``weights_path`` or ``pretrained``).
        num_classes: classes of the task; a checkpoint head of another size is refused.
    """

    def __init__(self, spec: ModelSpec, num_classes: int) -> None:
        super().__init__()
        if spec.weights_path is None and not spec.pretrained:
            rank_zero_warn(
                f"teacher {spec.name!r} has neither weights_path nor pretrained weights: it is "
                "untrained, so the student will learn noise. Set teacher.weights_path."
            )
        self.spec = spec
        # Read once: the weights, and the scores the teacher's own training recorded (for TeacherCheck).
        weights = read_weights_file(spec.weights_path) if spec.weights_path is not None else None
        self.recorded_scores: dict[str, float] = weights.recorded_scores if weights is not None else {}
        self.class_names: list[str] | None = weights.class_names if weights is not None else None
        self.network: Classifier = spec.build(num_classes, strict_head=True, weights=weights)
        freeze(self.network)
        self.sha256 = state_dict_sha256(self.network)
        self.taps: FeatureTaps | None = None
        self.eval()

    def members(self) -> list[FrozenTeacher]:
        """The teachers this unit is made of: itself (a :class:`TeacherEnsemble` lists its members)."""
        return [self]

    def tap(self, layers: Sequence[str], sample: torch.Tensor) -> dict[str, torch.Size]:
        """Record ``layers`` in every :meth:`forward` from now on; returns their probed shapes."""
        self.taps = FeatureTaps(self.network, layers, sample)
        return self.taps.shapes

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> ModelOutputs:
        if self.taps is None:
            return ModelOutputs(self.network(x))
        return ModelOutputs(*self.taps(x))

    def state_names(self, prefix: str) -> list[str]:
        """Every parameter and buffer name of the teacher under ``prefix`` (its place in the owner)."""
        return [prefix + name for name in self.state_dict()]

    def fingerprint(self) -> dict[str, Any]:
        """What a student checkpoint records about its teacher: where it came from and its hash."""
        return {"spec": self.spec.to_dict(), "sha256": self.sha256}

    def check_class_order(self, class_names: Sequence[str]) -> None:
        """Refuse data that numbers the teacher's classes in another order: every soft label would go to the
        wrong class, silently. Different names are only warned about (the same classes may be spelled
        differently by two data sets)."""
        trained, given = self.class_names, [str(name) for name in class_names]
        if not trained or not given or trained == given:
            return
        where = self.spec.weights_path
        pairs = zip(trained, given, strict=False)
        k = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(trained), len(given)))
        first = f"class {k} is {_name(trained, k)} to the teacher but {_name(given, k)} in the data"
        if sorted(trained) == sorted(given):
            raise ConfigError(
                f"teacher {where} was trained with its classes in another order than the data's ({first}): give the "
                f"data the teacher's order {_shown(trained)} (e.g. data.labels) or retrain the teacher"
            )
        rank_zero_warn(f"teacher {where} was trained on other class names than the data's ({first}): same task?")

    def verify(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to go on when this teacher is not the one ``fingerprint`` describes."""
        check_fingerprint(fingerprint, self.network)

    def recalibrate_batchnorm(self, batches: Iterable[torch.Tensor]) -> int:
        """Recompute the BatchNorm statistics from training ``batches`` (precise BN); returns the batches used.

        The weights stay; the hash is taken again, since the teacher is no longer what its spec builds.
        """
        used = recalibrate_batchnorm(self.network, batches)
        self.rehash()
        return used

    def rehash(self) -> None:
        """Take the hash again after weights were loaded into the teacher (a checkpoint that stored it)."""
        self.sha256 = state_dict_sha256(self.network)


def _name(names: Sequence[str], k: int) -> str:
    return repr(names[k]) if k < len(names) else "absent"


def _shown(names: Sequence[str], limit: int = 10) -> str:
    return str(list(names[:limit]))[:-1] + (f", ... {len(names)} in all]" if len(names) > limit else "]")
