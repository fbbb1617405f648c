"""What Lightning does not restore on resume: the random number generators; and the check that a
checkpoint was saved with the config it is resumed or evaluated with."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from kd_lightning.errors import ConfigError

# Where checkpoints record the ``(C, H, W)`` of the training images as the network saw them, so that
# report and export can check the data they are given against it.
INPUT_SHAPE_KEY = "kd_lightning_input_shape"

# Settings that change how fast a run goes, not what it computes: free to differ from a checkpoint's.
SPEED_ONLY = frozenset({"compile", "channels_last", "num_workers"})


class ExactResume(Callback):
    """Save the RNG states in every checkpoint, restore them on resume; refuse a foreign checkpoint.

    Lightning restores weights, optimizer, schedulers, loop counters and callback states, but
    reseeds the global RNGs instead of restoring them, so dropout masks and augmentations
    after a resume differ from an uninterrupted run. The states are stored as tensors and
    plain values, so checkpoints still load with ``weights_only=True``. The data order is
    restored by the DataModule's sampler (:class:`~kd_lightning.data.sampler.ResumableRandomSampler`).

    Resuming a fit from a checkpoint whose module or data hyper-parameters differ from the
    current config is refused with the differences (:func:`check_checkpoint_config`), since the
    run would silently change mid-way (a changed ``max_epochs`` or trainer setting is allowed).
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None
        self._input_shape: list[int] | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        # Evaluating a checkpoint: the input shape it was trained on, and the file, to check the data against.
        self._trained_shape: tuple[int, ...] | None = None
        self._ckpt_path: str | Path | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":
            datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
            check_checkpoint_config(checkpoint, pl_module, datamodule, trainer.ckpt_path, "fit")
        else:
            shape = checkpoint.get(INPUT_SHAPE_KEY)
            self._trained_shape = tuple(int(v) for v in shape) if isinstance(shape, list | tuple) else None
            self._ckpt_path = trainer.ckpt_path

    def _check_evaluated_input(self, pl_module: L.LightningModule) -> None:
        # A network with global pooling runs on any image size, so evaluating a checkpoint on images
        # of another size (or channel count) than it was trained on would give numbers, just wrong ones.
        network = getattr(pl_module, "network", None)
        if self._trained_shape is not None and isinstance(network, torch.nn.Module) and self._hook is None:
            self._hook = network.register_forward_pre_hook(self._refuse_other_input_shape)

    def _refuse_other_input_shape(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not (args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4) or self._trained_shape is None:
            return
        self._remove_hook()
        check_input_shape(self._trained_shape, tuple(int(v) for v in args[0].shape[1:]), module, self._ckpt_path)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":
            self._check_evaluated_input(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_evaluated_input(pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_evaluated_input(pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # What the trained network itself receives (after resizing, or rendered from a cache),
        # recorded from its first call; a run on pre-computed features records nothing.
        network = getattr(pl_module, "network", None)
        if isinstance(network, torch.nn.Module) and self._input_shape is None:
            self._hook = network.register_forward_pre_hook(self._record_input_shape)

    def _record_input_shape(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            self._input_shape = [int(v) for v in args[0].shape[1:]]
            self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hook()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove_hook()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._input_shape is not None:
            checkpoint[INPUT_SHAPE_KEY] = self._input_shape

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The last moment before the first resumed batch: nothing after it draws random numbers
        # that the uninterrupted run would not have drawn.
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None


def collect_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    state = np.random.get_state(legacy=True)
    if isinstance(state, dict):  # NumPy's global generator is a Mersenne Twister: its legacy state is a tuple
        raise TypeError("NumPy's global generator is not a Mersenne Twister")
    kind, keys, pos, has_gauss, cached = state
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos},
        "numpy_gauss": (has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_as_tuples(states["python"]))
    numpy = states["numpy"]
    has_gauss, cached = states["numpy_gauss"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants nested tuples; a checkpoint round trip may give lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def check_checkpoint_class(checkpoint: dict[str, Any], class_path: str, path: str | Path | None) -> None:
    """Refuse a checkpoint saved by the CLI from another module class than ``class_path``.

    Classes are compared by name, never imported: a checkpoint is data, and importing the module
    it names would run that module's code. (``kd_lightning.modules.X`` and
    ``kd_lightning.modules.distiller.X`` name one class.)
    """
    saved = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if isinstance(saved, str) and saved.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
        raise ConfigError(
            f"--ckpt_path {path} is a checkpoint of {saved}, but the config builds {class_path}: give the config "
            "the checkpoint was trained with (e.g. a teacher's checkpoint needs the teacher's config)"
        )


def check_checkpoint_config(
    checkpoint: dict[str, Any],
    module: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    path: str | Path | None,
    stage: str,
    adopt_flag: str | None = None,
) -> None:
    """Refuse a checkpoint whose settings differ from the config's, listing each difference.

    Lightning would otherwise silently take the model settings from one and the weights from the
    other (or train a teacher checkpoint into a distillation folder). Model settings must match
    for every stage; data settings too when resuming a fit, since the run would change mid-way
    (evaluating on other data is what ``test`` is for). Speed-only switches may differ.

    Raises:
        ConfigError: another module class, or the list of differing settings with both values.
    """
    module_class = f"{type(module).__module__}.{type(module).__qualname__}"
    check_checkpoint_class(checkpoint, module_class, path)
    changes = _diff(checkpoint.get("hyper_parameters", {}), dict(module.hparams), "model.")
    if stage == "fit" and datamodule is not None:
        changes += _diff(checkpoint.get("datamodule_hyper_parameters", {}), dict(datamodule.hparams), "data.")
    shape = checkpoint.get(INPUT_SHAPE_KEY)
    size = getattr(datamodule, "image_size", None)
    if stage != "fit" and isinstance(shape, list | tuple) and len(shape) == 3 and isinstance(size, int):
        # Checked here, before the run writes anything; the channels only once a batch shows them.
        check_input_shape(tuple(shape), (None, size, size), getattr(module, "network", None), path)
    if changes:
        fix = "use the config it was saved with"
        if adopt_flag:
            fix += f", or add --{adopt_flag} true to take the checkpoint's model settings"
        raise ConfigError(
            f"--ckpt_path {path} was saved with another config: " + "; ".join(changes) + f". To {stage} it, {fix}."
        )


def check_input_shape(
    trained: tuple[int, ...], given: tuple[int | None, ...], network: Any, path: str | Path | None
) -> None:
    """Refuse evaluation data of another channel count or image size than the checkpoint was trained
    on (``None`` in ``given``: not known yet)."""
    if input_shape_differs(trained, given, network):
        shown = ["×".join(str(v) for v in shape if v is not None) for shape in (trained, given)]
        raise ConfigError(
            f"--ckpt_path {path} was trained on {shown[0]} images but the data gives {shown[1]}: "
            "evaluate it with the data settings it was trained with (channels, image_size)"
        )


def input_shape_differs(trained: tuple[int, ...], given: tuple[int | None, ...], network: Any) -> bool:
    """Whether ``[C, H, W]`` data ``given`` (``None``: not known yet) is not what ``network`` was trained on.

    A network that resizes its input itself (a per-model input size) takes any image size, not
    another channel count.
    """
    resizes = getattr(getattr(network, "input_adapter", None), "resize_to", None) is not None
    channels_differ = given[0] is not None and given[0] != trained[0]
    size_differs = not resizes and any(g is not None and g != t for t, g in zip(trained[1:], given[1:], strict=True))
    return channels_differ or size_differs


def _diff(saved: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    """``key: checkpoint X, config Y`` for every differing hyper-parameter (private ``_`` keys and
    speed-only switches aside)."""
    keys = sorted(k for k in saved.keys() | current.keys() if not str(k).startswith("_") and k not in SPEED_ONLY)
    missing = object()
    return [
        f"{prefix}{k}: checkpoint {saved.get(k, '<unset>')!r}, config {current.get(k, '<unset>')!r}"
        for k in keys
        if saved.get(k, missing) != current.get(k, missing)
    ]
