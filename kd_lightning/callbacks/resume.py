"""What Lightning does not restore on resume: the random number generators, and a config check."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from kd_lightning.errors import ConfigError


class ExactResume(Callback):
    """Save the RNG states in every checkpoint, restore them on resume; refuse a foreign checkpoint.

    Lightning restores weights, optimizer, schedulers, loop counters and callback states, but
    reseeds the global RNGs instead of restoring them, so dropout masks and augmentations
    after a resume differ from an uninterrupted run. The states are stored as tensors and
    plain values, so checkpoints still load with ``weights_only=True``. The data order is
    restored by the DataModule's sampler (:class:`~kd_lightning.data.sampler.ResumableRandomSampler`).

    Resuming a fit from a checkpoint whose module or data hyper-parameters differ from the
    current config is refused with the differences, since the run would silently change
    mid-way (a changed ``max_epochs`` or trainer setting is allowed).
    """

    def __init__(self) -> None:
        self._rng_to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": collect_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":
            return
        changes = _diff(checkpoint.get("hyper_parameters", {}), dict(pl_module.hparams), "model.")
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # Lightning sets it at run time, undeclared
        if datamodule is not None:
            changes += _diff(checkpoint.get("datamodule_hyper_parameters", {}), dict(datamodule.hparams), "data.")
        if changes:
            raise ConfigError(
                "the resume checkpoint was trained with another config: "
                + "; ".join(changes[:8])
                + ". Resume with the config it was saved with, or start a new run without --ckpt_path."
            )

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


def _diff(saved: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    """``key: checkpoint X, config Y`` for every differing hyper-parameter (private ``_`` keys aside)."""
    keys = sorted(k for k in saved.keys() | current.keys() if not str(k).startswith("_"))
    missing = object()
    return [
        f"{prefix}{k}: checkpoint {saved.get(k, '<unset>')!r}, config {current.get(k, '<unset>')!r}"
        for k in keys
        if saved.get(k, missing) != current.get(k, missing)
    ]
