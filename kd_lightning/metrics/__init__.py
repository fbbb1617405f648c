"""Classification and distillation metrics: pure functions plus thin torchmetrics wrappers."""

from kd_lightning.metrics.accuracy import TopKAccuracy, topk_hits
from kd_lightning.metrics.classification import classification_metrics
from kd_lightning.metrics.distillation import TeacherStudentKL, teacher_student_kl

__all__ = ["TeacherStudentKL", "TopKAccuracy", "classification_metrics", "teacher_student_kl", "topk_hits"]
