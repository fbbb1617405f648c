"""Training batches drawn beside the training loop, for statistics such as BatchNorm's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.data.transforms import augment_batch, to_float_images
from kd_lightning.errors import ConfigError


def training_batches(datamodule: Any, num_batches: int, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Up to ``num_batches`` model-ready training batches of a kd_lightning image DataModule.

    Drawn from its own seeded generator (the global random state, and hence an exact resume,
    is left alone), at the training batch size, with the training augmentation: the batches
    whose statistics the network is trained on. A last, incomplete batch is dropped unless it
    is the only one (a BatchNorm estimate from a handful of images would be noisy).

    Raises:
        ConfigError: the DataModule holds no training images in memory (not a kd_lightning
            :class:`~kd_lightning.data.ImageClassificationDataModule`, or not set up).
    """
    train_set = getattr(datamodule, "train_set", None)
    if not isinstance(train_set, TensorImageDataset) or len(train_set) == 0:
        raise ConfigError(
            "BatchNorm recalibration needs the training images of a kd_lightning image DataModule "
            f"(data.train_set), got {type(datamodule).__name__}"
        )
    generator = torch.Generator().manual_seed(seed)
    batch_size = datamodule.batch_size
    order = torch.randperm(len(train_set), generator=generator)[: num_batches * batch_size]
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks.pop()
    for index in chunks:
        images = to_float_images(train_set.images[index], datamodule.image_size)
        images = augment_batch(images, datamodule.crop_padding, datamodule.hflip, generator=generator)
        yield images.to(device)
