"""Tap intermediate activations of any network by module name, for feature distillation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# Names are looked up in the classifier's trunk first, so configs can say ``layer3`` rather
# than ``backbone.layer3``; full names (``backbone.layer3``, ``head``, ``backbone``) work too.
_TRUNK_PREFIX = "backbone."


def resolve_module(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    """The module a layer name refers to (trunk-relative first, then from the model root)."""
    modules = dict(model.named_modules())
    for candidate in (_TRUNK_PREFIX + name, name):
        if candidate in modules and candidate:
            return candidate, modules[candidate]
    return None


@torch.no_grad()
def probe_output_shapes(
    model: nn.Module, sample: torch.Tensor, names: Sequence[str] | None = None
) -> dict[str, torch.Size]:
    """Output shape of each named module (all tensor-valued ones when ``names`` is None) for ``sample``.

    The model runs in eval mode so the probe does not touch BatchNorm running statistics, and
    is put back in its previous mode afterwards.
    """
    targets = dict(model.named_modules()) if names is None else {n: resolve_module(model, n)[1] for n in names}
    shapes: dict[str, torch.Size] = {}
    handles = [module.register_forward_hook(_shape_recorder(shapes, name)) for name, module in targets.items() if name]
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
    def hook(module: nn.Module, args, output) -> None:
        if isinstance(output, torch.Tensor):
            shapes[name] = output.shape

    return hook


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
        layers: module names to record, trunk-relative (``layer2``) or full (``backbone.layer2``).
        sample: one dummy batch of the model's input, used to report the available layers.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], sample: torch.Tensor) -> None:
        self.model = model
        self.layers = tuple(dict.fromkeys(layers))
        missing = [name for name in self.layers if resolve_module(model, name) is None]
        if missing:
            raise ValueError(
                f"no layer named {missing} in {type(model).__name__} "
                f"{getattr(model, 'name', '')!r}. Available layers and their output shapes [C, H, W]:\n"
                + describe_layers(model, sample)
            )
        self._recording = False
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = [
            resolve_module(model, name)[1].register_forward_hook(_Recorder(self, name)) for name in self.layers
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
    """The forward hook of one tapped layer; a class rather than a closure so models stay picklable."""

    def __init__(self, taps: FeatureTaps, name: str) -> None:
        self.taps, self.name = taps, name

    def __call__(self, module: nn.Module, args, output) -> None:
        if self.taps._recording:
            self.taps._captured[self.name] = output
