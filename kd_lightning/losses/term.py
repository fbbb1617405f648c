"""``LossTerm``: one weighted term of a distillation objective, as a config names it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CROSS_ENTROPY = "ce"


@dataclass
class LossTerm:
    """A weighted loss term: ``ce`` (cross-entropy on labels) or a registered distillation loss.

    Args:
        name: ``ce`` or a registry name (``kd``, ``dkd``, ``dist``, ``fitnet``, ``at``, ``sp``,
            ``rkd``, ``pkt``, ``crd``; see ``kd_lightning.losses.list_losses()``).
        weight: multiplier of the term in the total loss.
        kwargs: hyper-parameters of the loss (e.g. ``{temperature: 4}``, or
            ``{student_layers: [layer2], teacher_layers: [layer2]}`` for feature losses).
        label: key under which the term is logged (``train/<label>``); defaults to ``name``.
            Needed only when one loss appears twice, e.g. AT on two sets of layers.
    """

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def key(self) -> str:
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the term can live in a checkpoint loaded with ``weights_only=True``."""
        return asdict(self)


def as_term(value: LossTerm | dict[str, Any]) -> LossTerm:
    """Accept a term or its dict form (from YAML or a checkpoint's hyper-parameters)."""
    return value if isinstance(value, LossTerm) else LossTerm(**value)
