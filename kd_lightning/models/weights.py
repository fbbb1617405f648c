"""Loading local weight files (state dicts or Lightning checkpoints) into a Classifier, safely."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kd_lightning.errors import KDLightningError

# Prefixes under which networks are stored: kd_lightning's modules keep the trained network
# (a finetuned backbone, a distilled student) as ``network.``; others use ``model.``/``module.``.
KNOWN_PREFIXES = ("", "network.", "model.", "module.", "student.", "teacher.")


class CheckpointError(KDLightningError, ValueError):
    """A weights file that is missing, unreadable, or does not fit the model."""


@dataclass
class LoadReport:
    """What happened when a weights file was loaded; printed so nothing is dropped silently."""

    path: str
    prefix: str
    loaded: int
    skipped_head: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f", new head (checkpoint head {self.skipped_head} has another shape)" if self.skipped_head else ""
        return f"loaded {self.loaded} tensors from {self.path} (prefix {self.prefix!r}){head}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a plain state-dict file or a Lightning checkpoint.

    Always ``weights_only=True``: a checkpoint is data, and a file crafted to run code on
    unpickling is refused instead of executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path} (check the path, relative to {Path.cwd()})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt/unsafe files
        raise CheckpointError(
            f"cannot read {path}: {str(err).splitlines()[0]}. The file is truncated, corrupt, or "
            "holds objects other than tensors; re-export it as a plain state dict."
        ) from err
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | Path, strict_head: bool = False) -> LoadReport:
    """Load ``path`` into ``model``, finding the key prefix the file used.

    The head (``head.*``) is skipped when its shape differs (a new label set); every other
    parameter and buffer must match, otherwise the file belongs to another architecture and a
    :class:`CheckpointError` lists the mismatches.
    """
    state = read_state_dict(path)
    target = model.state_dict()
    prefix = max(KNOWN_PREFIXES, key=lambda p: _matches(state, target, p))
    stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    # A head with another class count is a new label set; one of another width is another architecture.
    skipped_head = [
        k for k in target if k.startswith("head.") and k in stripped and stripped[k].shape[:1] != target[k].shape[:1]
    ]
    if skipped_head and strict_head:
        theirs, ours = stripped["head.weight"].shape[0], target["head.weight"].shape[0]
        if theirs == ours:  # same classes, other feature width: an architecture mismatch, reported below
            skipped_head = []
    if skipped_head and strict_head:
        raise CheckpointError(
            f"{path} was trained for {theirs} classes but this model has {ours}: teacher and "
            "student must share one label set (check data.num_classes and the teacher checkpoint)"
        )
    missing = [k for k in target if k not in stripped and k not in skipped_head]
    wrong_shape = [
        f"{k}: file {tuple(stripped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in stripped and k not in skipped_head and stripped[k].shape != target[k].shape
    ]
    if missing or wrong_shape:
        problems = wrong_shape[:5] + [f"missing {k}" for k in missing[:5]]
        raise CheckpointError(
            f"{path} does not match {type(model).__name__} {getattr(model, 'name', '')!r} "
            f"({len(missing)} missing, {len(wrong_shape)} with another shape): "
            + "; ".join(problems)
            + ". Is it a checkpoint of another architecture? Build the model it was saved from."
        )
    loadable = {k: v for k, v in stripped.items() if k in target and k not in skipped_head}
    model.load_state_dict(loadable, strict=False)
    return LoadReport(str(path), prefix, len(loadable), skipped_head)


def _matches(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(1 for k in target if prefix + k in state and state[prefix + k].shape == target[k].shape)
