"""Lightning callbacks of kd_lightning."""

from kd_lightning.callbacks.confusion import ConfusionMatrixLogger
from kd_lightning.callbacks.last_and_best import LastAndBestAccuracy
from kd_lightning.callbacks.nonfinite import NonFiniteLossGuard
from kd_lightning.callbacks.precise_bn import PreciseBatchNorm
from kd_lightning.callbacks.resume import ExactResume
from kd_lightning.callbacks.teacher_check import TeacherCheck
from kd_lightning.callbacks.unfreeze import BackboneUnfreeze

__all__ = [
    "BackboneUnfreeze",
    "ConfusionMatrixLogger",
    "ExactResume",
    "LastAndBestAccuracy",
    "NonFiniteLossGuard",
    "PreciseBatchNorm",
    "TeacherCheck",
]
