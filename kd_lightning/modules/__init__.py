"""The LightningModules: a frozen-backbone finetuner and a teacher–student distiller."""

from kd_lightning.modules.base import SupervisedModule
from kd_lightning.modules.distiller import DistillationModule
from kd_lightning.modules.finetuner import FrozenBackboneFinetuner
from kd_lightning.modules.teacher import TeacherOptions

__all__ = ["DistillationModule", "FrozenBackboneFinetuner", "SupervisedModule", "TeacherOptions"]
