"""Getting a trained network and its data back for report and export, outside a training run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from kd_lightning import data as data_modules
from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.models import CheckpointError, Classifier, as_spec

NETWORK_PREFIX = "network."
# The hyper-parameter naming the trained network, by module: DistillationModule, FrozenBackboneFinetuner.
SPEC_KEYS = ("student", "backbone")


def load_network(checkpoint: str | Path) -> Classifier:
    """The trained network (``module.network``) of a kd_lightning Lightning checkpoint, in eval mode.

    Only the network is rebuilt, from the spec in the checkpoint's hyper-parameters: not the module,
    which would also load the teacher from its ``weights_path`` and fetch pretrained backbone weights,
    neither of which the trained network needs (its own weights are all in the checkpoint).
    The file is read with ``weights_only=True``.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    key = next((k for k in SPEC_KEYS if isinstance(hparams, dict) and k in hparams), None)
    if key is None:
        raise CheckpointError(
            f"{path} is not a kd_lightning Lightning checkpoint (no 'student' or 'backbone' hyper-parameter)"
        )
    spec = dataclasses.replace(as_spec(hparams[key]), pretrained=False, weights_path=None)
    network = spec.build(int(hparams["num_classes"]))
    state = {k[len(NETWORK_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(NETWORK_PREFIX)}
    network.load_state_dict(state)
    return network.eval()


def load_datamodule(source: str | Path) -> ImageClassificationDataModule:
    """A DataModule from a config file with a ``data:`` section (``class_path``/``init_args``, as in
    ``configs/``) or from a short name: ``digits``, ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        config: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        if "data" not in config:
            raise ValueError(f"{path} has no 'data:' section")
        init = config["data"]
        if "init_args" not in init:
            init = {**init, "init_args": {}}
        return instantiate_class((), init)
    by_name = {
        name.lower().removesuffix("datamodule"): getattr(data_modules, name)
        for name in data_modules.__all__
        if name.endswith("DataModule")
    }
    key = str(source).lower().replace("_", "").replace("-", "").removesuffix("datamodule")
    if key not in by_name:
        raise ValueError(f"unknown data set {source!r}: give a config file or one of {sorted(by_name)}")
    return by_name[key]()


def evaluation_batches(datamodule: ImageClassificationDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole test split as model-ready float batches (the DataModule's own on-device conversion)."""
    datamodule.setup("test")
    batches = (datamodule.on_after_batch_transfer(batch, 0) for batch in datamodule.test_dataloader())
    return [(batch.inputs, batch.labels) for batch in batches]
