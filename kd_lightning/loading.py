"""Getting a trained network and its data back for report and export, outside a training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.cli import instantiate_class

from kd_lightning import data as data_modules
from kd_lightning.checkpointing import INPUT_SHAPE_KEY, input_shape_differs, read_checkpoint
from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.errors import ConfigError, DataError, KDLightningError
from kd_lightning.models import CheckpointError, Classifier, InputConfig, as_spec

NETWORK_PREFIX = "network."
# The hyper-parameter naming the trained network, by module: DistillationModule, FrozenBackboneFinetuner.
# The hyper-parameter naming the trained network: a distiller's student, a finetuner's network, or a
# finetuner checkpoint written before that argument was renamed from `backbone` (still loadable).
SPEC_KEYS = ("student", "network", "backbone")


@dataclass
class TrainedNetwork:
    """A checkpoint's trained network and what it was trained on.

    Attributes:
        network: the network, in eval mode.
        path: the checkpoint it came from.
        input_shape: ``(C, H, W)`` of the training images as the network saw them, when the
            checkpoint records it (every kd_lightning module's checkpoint does).
    """

    network: Classifier
    path: Path
    input_shape: tuple[int, int, int] | None


def load_trained(checkpoint: str | Path) -> TrainedNetwork:
    """The trained network (``module.network``) of a kd_lightning Lightning checkpoint, and its input shape.

    Only the network is rebuilt, from the spec in the checkpoint's hyper-parameters: not the module,
    which would also load the teacher from its ``weights_path`` and fetch pretrained backbone weights,
    neither of which the trained network needs (its own weights are all in the checkpoint).
    The file is read with ``weights_only=True`` and its weights must be finite.
    """
    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    hparams = hparams if isinstance(hparams, dict) else {}
    key = next((k for k in SPEC_KEYS if k in hparams), None)
    if key is None or "num_classes" not in hparams:
        raise CheckpointError(
            f"{path} is not a kd_lightning Lightning checkpoint (no 'student' or 'network' hyper-parameter)"
        )
    try:
        spec = dataclasses.replace(as_spec(hparams[key]), pretrained=False, weights_path=None)
        network = spec.build(int(hparams["num_classes"]))
    except KDLightningError:
        raise
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot rebuild its network from {hparams[key]!r}: {err}") from err
    state = {k[len(NETWORK_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(NETWORK_PREFIX)}
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: its weights do not fit the network it describes: {first}") from err
    shape = ckpt.get(INPUT_SHAPE_KEY)
    input_shape = tuple(int(v) for v in shape) if isinstance(shape, list | tuple) and len(shape) == 3 else None
    return TrainedNetwork(network.eval(), path, input_shape)  # type: ignore[arg-type]


def load_network(checkpoint: str | Path) -> Classifier:
    """The trained network of a kd_lightning checkpoint, in eval mode (see :func:`load_trained`)."""
    return load_trained(checkpoint).network


def check_fits_data(trained: TrainedNetwork, datamodule: ImageClassificationDataModule, images: torch.Tensor) -> None:
    """Refuse data the network was not trained for: another class count, channel count or image size.

    A network with global pooling runs on any image size and a grayscale batch is silently
    expanded to three channels, so a mismatch would give numbers, just meaningless ones. (The
    size may differ for a network that resizes its input to its own input size.)

    Raises:
        ConfigError: naming the checkpoint, the data and both values.
    """
    network, path = trained.network, trained.path
    data_name = type(datamodule).__name__
    if network.num_classes != datamodule.num_classes:
        raise ConfigError(
            f"{path} predicts {network.num_classes} classes but {data_name} has {datamodule.num_classes}: "
            "give --data the data set the checkpoint was trained on"
        )
    shape = tuple(images.shape[1:])
    if trained.input_shape is not None:
        if input_shape_differs(trained.input_shape, shape, network):
            raise ConfigError(
                f"{path} was trained on {_shape(trained.input_shape)} images but {data_name} gives {_shape(shape)}: "
                "give --data the data config the checkpoint was trained with (channels, image_size)"
            )
    elif isinstance(network.input_config, InputConfig) and shape[0] not in (1, network.input_config.in_chans):
        raise ConfigError(
            f"{path} takes {network.input_config.in_chans}-channel images but {data_name} gives {shape[0]} channels"
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def load_datamodule(source: str | Path) -> ImageClassificationDataModule:
    """A DataModule from a config file with a ``data:`` section (``class_path``/``init_args``, as in
    ``configs/``) or from a short name: ``digits``, ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``.

    Raises:
        ConfigError: an unknown name, or a config file without a usable ``data:`` section.
        DataError: a config file that does not exist.
    """
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        return _datamodule_from_config(path)
    by_name = {
        name.lower().removesuffix("datamodule"): getattr(data_modules, name)
        for name in data_modules.__all__
        if name.endswith("DataModule") and name not in ("ImageClassificationDataModule", "TorchvisionDataModule")
    }
    key = str(source).lower().replace("_", "").replace("-", "").removesuffix("datamodule")
    if key not in by_name:
        raise ConfigError(f"unknown data set {str(source)!r}: give a config file or one of {sorted(by_name)}")
    return by_name[key]()


def _datamodule_from_config(path: Path) -> ImageClassificationDataModule:
    if not path.is_file():
        raise DataError(f"data config not found: {path}")
    try:
        config: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    section = config.get("data") if isinstance(config, dict) else None
    if not isinstance(section, dict) or "class_path" not in section:
        raise ConfigError(f"{path} has no 'data:' section with a class_path")
    init = section if "init_args" in section else {**section, "init_args": {}}
    try:
        datamodule = instantiate_class((), init)
    except KDLightningError:
        raise
    except (ImportError, AttributeError, TypeError, ValueError) as err:
        raise ConfigError(f"{path}: cannot build its data section: {err}") from err
    if not isinstance(datamodule, ImageClassificationDataModule):
        raise ConfigError(f"{path}: data.class_path {section['class_path']} is not a kd_lightning DataModule")
    return datamodule


def evaluation_batches(datamodule: ImageClassificationDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole test split as model-ready float batches (the DataModule's own on-device conversion)."""
    datamodule.setup("test")
    batches = [datamodule.on_after_batch_transfer(batch, 0) for batch in datamodule.test_dataloader()]
    if not batches:
        raise DataError(f"{type(datamodule).__name__} has no test images")
    return [(batch.inputs, batch.labels) for batch in batches]
