"""Classification and distillation metrics: pure functions plus thin torchmetrics wrappers."""

from kd_lightning.metrics.classification import classification_metrics
from kd_lightning.metrics.distillation import TeacherStudentKL, teacher_student_kl

__all__ = ["TeacherStudentKL", "classification_metrics", "teacher_student_kl"]
