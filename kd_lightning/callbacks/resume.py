"""What Lightning does not restore on resume (the random number generators), and the checks that a
checkpoint meets the config and the data it was trained with, run where Lightning loads it."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from kd_lightning.checkpointing import INPUT_SHAPE_KEY, check_checkpoint_config, check_input_shape


class ExactResume(Callback):
    """Save the RNG states in every checkpoint, restore them on resume; refuse a foreign checkpoint.

    Lightning restores weights, optimizer, schedulers, loop counters and callback states, but
    reseeds the global RNGs instead of restoring them, so dropout masks and augmentations
    after a resume differ from an uninterrupted run. The states are stored as tensors and
    plain values, so checkpoints still load with ``weights_only=True``. The data order is
    restored by the DataModule's sampler (:class:`~kd_lightning.data.sampler.ResumableRandomSampler`).

    Resuming a fit from a checkpoint whose module or data hyper-parameters differ from the
    current config is refused with the differences
    (:func:`~kd_lightning.checkpointing.check_checkpoint_config`), since the run would silently
    change mid-way (a changed ``max_epochs`` or trainer setting is allowed). Evaluating a
    checkpoint on images of another shape than it was trained on is refused at the first batch.
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
