"""LightningDataModules shared by the finetuner and the distiller."""

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.image_folder import Flowers102DataModule, ImageFolderDataModule
from kd_lightning.data.prepare import prepare_dataset
from kd_lightning.data.streaming import StreamingImageDataModule
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
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
    "StreamingImageDataModule",
    "TensorImageDataset",
    "TorchvisionDataModule",
    "prepare_dataset",
]
