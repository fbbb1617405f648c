"""Tap intermediate activations of any network by module name, for feature distillation.

A layer reference is ``<module>[@input|@output]``: ``<module>`` is a module path (``layer3``,
``backbone.layer3``, ``head``) or a stage of the backbone's declared stages (``stage:0`` the
first, ``stage:-1`` the last; see ``NetworkParts.stages``) or a module inside one
(``stage:0.attention.self.query``: the first transformer block's query projection), and ``@input``
taps what the module receives instead of what it returns (torchdistill's ``io: input``; ``@output`` is the default).
A module called several times in one forward pass (a block's shared ``relu``) is recorded at its
last call: ``layer1.0.relu@input`` is the pre-activation output of a CIFAR ResNet's first block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# Names are looked up in the classifier's trunk first, so configs can say ``layer3`` rather
# than ``backbone.layer3``; full names (``backbone.layer3``, ``head``, ``backbone``) work too.
_TRUNK_PREFIX = "backbone."
_STAGE = "stage:"
_IO = ("input", "output")


def split_io(ref: str) -> tuple[str, str]:
    """``"layer3@input"`` → ``("layer3", "input")``; no suffix means ``"output"``."""
    name, _, io = ref.partition("@")
    io = io or "output"
    if io not in _IO:
        raise ValueError(f"layer {ref!r}: the part after '@' must be 'input' or 'output', got {io!r}")
    return name, io


def resolve_module(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    """The module a layer reference names (its ``@io`` suffix aside): a stage, then trunk-relative, then full."""
    name, _ = split_io(name)
    if name.startswith(_STAGE):
        name = _stage_module(model, name)
    modules = dict(model.named_modules())
    for candidate in (_TRUNK_PREFIX + name, name):
        if candidate in modules and candidate:
            return candidate, modules[candidate]
    return None


def _tapped_module(model: nn.Module, name: str) -> nn.Module:
    """The module behind a layer reference, or a ValueError naming the reference."""
    found = resolve_module(model, name)
    if found is None:
        raise ValueError(f"no layer named {name!r} in {type(model).__name__} {getattr(model, 'name', '')!r}")
    return found[1]


def _stage_module(model: nn.Module, name: str) -> str:
    stages: tuple[str, ...] = getattr(model, "stages", ())
    if not stages:
        raise ValueError(
            f"{getattr(model, 'name', type(model).__name__)!r} declares no stages: name its layers instead of {name!r}"
        )
    index, _, inside = name.removeprefix(_STAGE).partition(".")
    try:
        stage = stages[int(index)]
    except (ValueError, IndexError):
        raise ValueError(
            f"{name!r} is not a stage of {getattr(model, 'name', '')!r}: it has {len(stages)} "
            f"(stage:0 … stage:{len(stages) - 1}, or stage:-1 for the last): {list(stages)}"
        ) from None
    return f"{stage}.{inside}" if inside else stage


@torch.no_grad()
def probe_output_shapes(
    model: nn.Module, sample: torch.Tensor, names: Sequence[str] | None = None
) -> dict[str, torch.Size]:
    """Shape of each named layer reference (every module's output when ``names`` is None) for ``sample``.

    The model runs in eval mode so the probe does not touch BatchNorm running statistics, and
    is put back in its previous mode afterwards.
    """
    targets = dict(model.named_modules()) if names is None else {n: _tapped_module(model, n) for n in names}
    shapes: dict[str, torch.Size] = {}
    handles = [
        _hook(module, split_io(name)[1], _shape_recorder(shapes, name)) for name, module in targets.items() if name
    ]
    was_training = model.training
    model.eval()
    try:
        model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def _shape_recorder(shapes: dict[str, torch.Size], name: str):
    def record(tensor) -> None:
        if isinstance(tensor, torch.Tensor):
            shapes[name] = tensor.shape

    return record


def _hook(module: nn.Module, io: str, record) -> RemovableHandle:
    """Call ``record(tensor)`` with the module's first input or its output at every forward."""
    if io == "input":
        return module.register_forward_pre_hook(_InputHook(record))
    return module.register_forward_hook(_OutputHook(record))


class _InputHook:
    """A forward pre-hook passing the module's first input on; a class so models stay picklable."""

    def __init__(self, record) -> None:
        self.record = record

    def __call__(self, module: nn.Module, args) -> None:
        tensor = args[0] if args else None
        if getattr(module, "inplace", False) and isinstance(tensor, torch.Tensor):
            # An in-place module (``ReLU(inplace=True)``) overwrites its input: keep what it received,
            # e.g. a pre-activation map (``layer1.0.relu@input``), not the activation it becomes.
            tensor = tensor.clone()
        self.record(tensor)


class _OutputHook:
    """A forward hook passing the module's output on; a class so models stay picklable."""

    def __init__(self, record) -> None:
        self.record = record

    def __call__(self, module: nn.Module, args, output) -> None:
        self.record(output)


def describe_layers(model: nn.Module, sample: torch.Tensor, max_depth: int = 3) -> str:
    """One line per tappable module (name and output shape), for error messages."""
    shapes = probe_output_shapes(model, sample)
    lines = []
    for name, shape in shapes.items():
        short = name.removeprefix(_TRUNK_PREFIX)
        if short.count(".") < max_depth:
            lines.append(f"  {short}: {tuple(shape[1:])}")
    return "\n".join(lines)


class FeatureTaps:
    """Forward hooks that record the outputs of named modules while the network runs.

    Not an ``nn.Module``: the taps own no parameters and must not appear in checkpoints.
    Recording happens only inside :meth:`__call__`, so plain ``model(x)`` calls (validation,
    export) are unaffected.

    Args:
        model: the network (a ``Classifier`` or any ``nn.Module``).
        layers: layer references to record (see the module docstring): ``layer2``,
            ``backbone.layer2``, ``stage:-1``, ``layer3@input``.
        sample: one dummy batch of the model's input, used to report the available layers.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], sample: torch.Tensor) -> None:
        self.model = model
        self.layers = tuple(dict.fromkeys(layers))
        missing = [name for name in self.layers if resolve_module(model, name) is None]
        if missing:
            stages = getattr(model, "stages", ())
            raise ValueError(
                f"no layer named {missing} in {type(model).__name__} "
                f"{getattr(model, 'name', '')!r}. Its stages (stage:0 …): {list(stages)}. "
                "Available layers and their output shapes [C, H, W]:\n" + describe_layers(model, sample)
            )
        self._recording = False
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = [
            _hook(_tapped_module(model, name), split_io(name)[1], _Recorder(self, name)) for name in self.layers
        ]
        self.shapes = probe_output_shapes(model, sample, self.layers)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model; return its output and the recorded features by layer name."""
        self._captured = {}
        self._recording = True
        try:
            output = self.model(x)
        finally:
            self._recording = False
        features, self._captured = self._captured, {}
        return output, features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class _Recorder:
    """Records one tapped tensor; a class rather than a closure so models stay picklable."""

    def __init__(self, taps: FeatureTaps, name: str) -> None:
        self.taps, self.name = taps, name

    def __call__(self, tensor: torch.Tensor) -> None:
        if self.taps._recording:
            self.taps._captured[self.name] = tensor
