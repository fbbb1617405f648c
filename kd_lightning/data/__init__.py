"""LightningDataModules shared by the finetuner and the distiller."""

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.image_folder import ImageFolderDataModule
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.data.text import TextClassificationDataModule
from kd_lightning.data.text_sets import RottenTomatoesDataModule, TREC6DataModule
from kd_lightning.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    Flowers102DataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "CIFAR100DataModule",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "Flowers102DataModule",
    "ImageClassificationDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "RottenTomatoesDataModule",
    "StreamingImageDataModule",
    "TREC6DataModule",
    "TensorImageDataset",
    "TextClassificationDataModule",
    "TorchvisionDataModule",
    "prepare_dataset",
]


def __getattr__(name: str):
    # The streaming module and ``prepare`` need LitData (the ``streaming`` extra, with its
    # object-storage clients): imported on first use, so in-memory users never load it.
    if name == "StreamingImageDataModule":
        from kd_lightning.data.streaming import StreamingImageDataModule

        return StreamingImageDataModule
    if name == "prepare_dataset":
        from kd_lightning.data.prepare import prepare_dataset

        return prepare_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
