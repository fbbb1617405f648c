"""Small torchvision data sets (MNIST, Fashion-MNIST, CIFAR) held in memory as decoded tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.errors import DataError


class TorchvisionDataModule(ImageClassificationDataModule):
    """A torchvision data set whose decoded images fit in memory (``.data``/``.targets``).

    Users with internet get torchvision's normal download (``download: true``); a ``data_dir``
    that already holds the files needs none.

    Args:
        download: let torchvision download the data set into ``data_dir`` if it is missing.
        **kwargs: see :class:`ImageClassificationDataModule`.
    """

    dataset_class: type[torchvision.datasets.VisionDataset]

    def __init__(self, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self.dataset_class(self.data_dir, train=train, download=True)

    def load_split(self, split: str) -> TensorImageDataset:
        try:
            dataset = self.dataset_class(self.data_dir, train=split == "train", download=False)
        except RuntimeError as err:
            raise DataError(
                f"{self.dataset_class.__name__} not found under {Path(self.data_dir).resolve()}: {err} "
                "Set data.download: true, or point data.data_dir at a folder that holds it."
            ) from err
        images = torch.as_tensor(np.asarray(dataset.data))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        return TensorImageDataset(images.contiguous(), torch.as_tensor(dataset.targets))


class MNISTDataModule(TorchvisionDataModule):
    """MNIST: 60,000/10,000 handwritten digits, 28×28 grayscale."""

    dataset_class = torchvision.datasets.MNIST
    class_names = [str(d) for d in range(10)]


class FashionMNISTDataModule(TorchvisionDataModule):
    """Fashion-MNIST: 60,000/10,000 clothing images, 28×28 grayscale, 10 classes."""

    dataset_class = torchvision.datasets.FashionMNIST
    class_names = list(torchvision.datasets.FashionMNIST.classes)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000/10,000 32×32 colour images, 10 classes (pad-4 crop + flip by default)."""

    dataset_class = torchvision.datasets.CIFAR10
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, crop_padding: int = 4, hflip: bool = True, **kwargs) -> None:
        super().__init__(crop_padding=crop_padding, hflip=hflip, **kwargs)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50,000/10,000 32×32 colour images, 100 classes (the KD literature's benchmark)."""

    dataset_class = torchvision.datasets.CIFAR100
    class_names = [f"class_{i}" for i in range(100)]
