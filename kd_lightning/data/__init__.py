"""LightningDataModules shared by the finetuner and the distiller."""

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.tensor_dataset import TensorImageDataset

__all__ = ["DigitsDataModule", "ImageClassificationDataModule", "TensorImageDataset"]
