"""What a network produced for one batch, and the label of a sample without one: shared by data,
losses, caches and modules."""

from __future__ import annotations

from typing import NamedTuple

import torch

# The label of a sample without one (an unlabeled transfer-set image): ``F.cross_entropy``'s
# default ``ignore_index``, so label losses skip it and distillation terms still see it.
IGNORE_LABEL = -100


class ModelOutputs(NamedTuple):
    """A network's logits for one batch and any tapped intermediate features, by layer name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = {}


# Several teachers' outputs travel as one ``ModelOutputs`` (what the teacher cache stores): teacher
# ``k``'s logits as the feature ``ensemble.<k>``, its tapped layer ``L`` as ``ensemble.<k>/L``.
MEMBER = "ensemble."


def member_name(k: int, layer: str | None = None) -> str:
    """The feature name of teacher ``k``'s logits, or of its tapped ``layer``."""
    return f"{MEMBER}{k}" if layer is None else f"{MEMBER}{k}/{layer}"


def member_outputs(outputs: ModelOutputs) -> list[ModelOutputs]:
    """Each teacher's logits and tapped layers, in teacher order, from several teachers' joint outputs."""
    members: dict[int, ModelOutputs] = {}
    for name, t in outputs.features.items():
        if name.startswith(MEMBER) and "/" not in name:
            members[int(name.removeprefix(MEMBER))] = ModelOutputs(t, {})
    for name, t in outputs.features.items():
        if name.startswith(MEMBER) and "/" in name:
            k, _, layer = name.removeprefix(MEMBER).partition("/")
            members[int(k)].features[layer] = t
    return [members[k] for k in sorted(members)]
