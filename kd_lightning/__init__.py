"""kd_lightning: transfer learning and knowledge distillation as PyTorch Lightning modules."""

from kd_lightning.data import DigitsDataModule, ImageClassificationDataModule
from kd_lightning.losses import kd_loss
from kd_lightning.models import ModelSpec, create_model
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

__version__ = "0.1.0"

__all__ = [
    "DigitsDataModule",
    "DistillationModule",
    "FrozenBackboneFinetuner",
    "ImageClassificationDataModule",
    "ModelSpec",
    "create_model",
    "kd_loss",
]
