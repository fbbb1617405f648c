"""The LightningModules: a frozen-backbone finetuner, a teacher–student distiller and a FixMatch student."""

from kd_lightning.modules.base import SupervisedModule
from kd_lightning.modules.distiller import DistillationModule
from kd_lightning.modules.finetuner import FrozenBackboneFinetuner
from kd_lightning.modules.fixmatch import FixMatchModule
from kd_lightning.modules.teacher import TeacherOptions

__all__ = ["DistillationModule", "FixMatchModule", "FrozenBackboneFinetuner", "SupervisedModule", "TeacherOptions"]
