"""Loading local weight files (state dicts or Lightning checkpoints) into a Classifier, safely."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_lightning.errors import CheckpointError
from kd_lightning.safe_load import safe_torch_load

# Prefixes under which networks are stored: kd_lightning's modules keep the trained network
# (a finetuned backbone, a distilled student) as ``network.``; others use ``model.``/``module.``.
KNOWN_PREFIXES = ("", "network.", "model.", "module.", "student.", "teacher.")
# Where kd_lightning's checkpoints record the data's class order (index k is class_names[k]).
CLASS_NAMES_KEY = "class_names"
REEXPORT = "save the weights alone, torch.save(model.state_dict(), path), or a Trainer checkpoint"


@dataclass
class LoadReport:
    """What happened when a weights file was loaded; printed so nothing is dropped silently."""

    path: str
    prefix: str
    loaded: int
    skipped_head: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = f", new head (checkpoint head {self.skipped_head} has another shape)" if self.skipped_head else ""
        extra = ""
        if self.unexpected:
            shown = ", ".join(self.unexpected[:5]) + (" ..." if len(self.unexpected) > 5 else "")
            extra = f", ignored {len(self.unexpected)} keys the model does not have ({shown})"
        return f"loaded {self.loaded} tensors from {self.path} (prefix {self.prefix!r}){head}{extra}"


@dataclass(frozen=True)
class WeightsFile:
    """A weights file, read once: its tensors and the scores its Trainer's checkpoint callbacks recorded.

    Attributes:
        state: the state dict (of a plain state-dict file, or a Lightning checkpoint's ``state_dict``).
        recorded_scores: each ``ModelCheckpoint``'s monitored metric and its score when the file was
            saved (``{"val/acc": 0.97}``); empty for a plain state-dict file.
        class_names: the class order the network was trained with, when the checkpoint recorded it (its
            data module's ``class_names``, or a text data module's ``labels`` hyper-parameter); else None.
    """

    path: Path
    state: dict[str, torch.Tensor]
    recorded_scores: dict[str, float] = field(default_factory=dict)
    class_names: list[str] | None = None


def read_weights_file(path: str | Path) -> WeightsFile:
    """Read a plain state-dict file or a Lightning checkpoint (``weights_only=True``), its weights checked finite."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path} (check the path, relative to {Path.cwd()})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read {path}: the file is empty (0 bytes)")
    obj = safe_torch_load(path, "weights file", REEXPORT)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights in {len(bad)} tensors ({', '.join(bad[:3])}): damaged")
    if "state_dict" not in obj:
        return WeightsFile(path, state)
    callbacks = obj.get("callbacks")
    return WeightsFile(
        path, state, _recorded_scores(callbacks if isinstance(callbacks, dict) else {}), _class_names(obj)
    )


def _class_names(checkpoint: dict[str, Any]) -> list[str] | None:
    names = checkpoint.get(CLASS_NAMES_KEY)
    if names is None:
        datamodule_hparams = checkpoint.get("datamodule_hyper_parameters")
        names = datamodule_hparams.get("labels") if isinstance(datamodule_hparams, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        return None
    return [str(name) for name in names]


def _recorded_scores(callbacks: dict[str, Any]) -> dict[str, float]:
    scores = {}
    for name, state in callbacks.items():
        if name.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("current_score") is not None:
            scores[str(state.get("monitor"))] = float(state["current_score"])
    return scores


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a plain state-dict file or a Lightning checkpoint (see :func:`read_weights_file`)."""
    return read_weights_file(path).state


def remap_prefixes(state: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename keys by prefix: ``{"encoder.": "backbone.", "fc.": "head."}``.

    The longest matching prefix wins; keys that match none keep their name. An empty-string
    source prefix (``{"": "backbone."}``) prepends to every key, for files saved from a bare trunk.
    """
    prefixes = sorted(key_map, key=len, reverse=True)
    renamed = {}
    for key, value in state.items():
        old = next((p for p in prefixes if key.startswith(p)), None)
        renamed[key if old is None else key_map[old] + key[len(old) :]] = value
    return renamed


def remap_positional(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], skip: tuple[str, ...] = ("num_batches_tracked",)
) -> dict[str, torch.Tensor]:
    """Give the file's tensors the target's key names, matched by order.

    For weights exported from another implementation of the same architecture (other names,
    same layers in the same order). Keys ending in ``skip`` are left out on both sides, since
    implementations disagree on where they put BatchNorm's counters; the target keeps its own.
    Every pair must agree in shape, otherwise the architectures differ and a
    :class:`CheckpointError` names the first mismatch.
    """
    theirs = [(k, v) for k, v in state.items() if not k.endswith(skip)]
    ours = [(k, v) for k, v in target.items() if not k.endswith(skip)]
    if len(theirs) != len(ours):
        raise CheckpointError(
            f"positional mapping needs as many tensors in the file as in the model: {len(theirs)} vs {len(ours)}"
        )
    for (their_key, their_value), (our_key, our_value) in zip(theirs, ours, strict=True):
        if their_value.shape != our_value.shape:
            raise CheckpointError(
                f"positional mapping failed: file {their_key} {tuple(their_value.shape)} lines up with model "
                f"{our_key} {tuple(our_value.shape)}; the file holds another architecture"
            )
    mapped = {our_key: value for (our_key, _), (_, value) in zip(ours, theirs, strict=True)}
    mapped.update({k: v for k, v in target.items() if k.endswith(skip)})
    return mapped


def load_weights(
    model: nn.Module,
    weights: str | Path | WeightsFile,
    strict_head: bool = False,
    key_map: dict[str, str] | None = None,
    positional: bool = False,
) -> LoadReport:
    """Load ``path`` into ``model``, finding the key prefix the file used.

    The head (``head.*``) is skipped when its shape differs (a new label set); every other
    parameter and buffer must match, otherwise the file belongs to another architecture and a
    :class:`CheckpointError` lists the mismatches. Keys of the file the model does not have are
    ignored and listed in the returned :class:`LoadReport`.

    Args:
        model: the network to load into (usually a :class:`Classifier`).
        weights: a state-dict file or a Lightning checkpoint, or such a file already read.
        strict_head: refuse a head trained for another number of classes.
        key_map: rename the file's keys by prefix first (see :func:`remap_prefixes`).
        positional: map the file's tensors onto the model's by order (see :func:`remap_positional`).
    """
    file = weights if isinstance(weights, WeightsFile) else read_weights_file(weights)
    path, state = file.path, file.state
    target = model.state_dict()
    if key_map:
        state = remap_prefixes(state, key_map)
    if positional:
        state = remap_positional(state, target)
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
    extra_head = sorted(k for k in stripped if k.startswith("head.") and k not in target)
    if extra_head and not skipped_head:
        raise CheckpointError(
            f"{path} has head tensors this model lacks ({', '.join(extra_head[:3])}): it was saved with another "
            "head (e.g. head_norm: true); build the model with the head it was trained with"
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
    unexpected = sorted(k for k in state if not (k.startswith(prefix) and k[len(prefix) :] in target))
    return LoadReport(str(path), prefix, len(loadable), skipped_head, unexpected)


def _matches(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(1 for k in target if prefix + k in state and state[prefix + k].shape == target[k].shape)
