"""The teacher cache: the teacher's training outputs computed once, for the exact views the student sees.

:func:`teacher_cache_source` is the one way in: the DataModule says whether it streams its training
set or reads token ids, and the matching implementation (:mod:`~kd_lightning.cache.teacher.in_memory`,
:mod:`~kd_lightning.cache.teacher.streamed`, :mod:`~kd_lightning.cache.teacher.token_ids`) fills and
serves the entry that :mod:`~kd_lightning.cache.teacher.entry` defines.
"""

from __future__ import annotations

import logging

import lightning as L

from kd_lightning.cache.teacher.entry import Teacher, TeacherCache, TeacherCacheConfig
from kd_lightning.cache.teacher.in_memory import in_memory_source
from kd_lightning.cache.teacher.streamed import streamed_source
from kd_lightning.cache.teacher.token_ids import token_source
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.sources import BatchSource

log = logging.getLogger(__name__)


def teacher_cache_source(cache: TeacherCache, trainer: L.Trainer, teacher: Teacher) -> BatchSource | None:
    """This rank's training batches with the teacher's stored outputs; ``None`` (logged) when caching cannot apply."""
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
    if not isinstance(datamodule, ImageClassificationDataModule) or datamodule.train_set is None:
        log.warning("teacher cache not used: it needs a kd_lightning ImageClassificationDataModule")
        return None
    if datamodule.streams_training_set:
        return streamed_source(cache, trainer, datamodule, teacher)
    if datamodule.reads_tokens:
        return token_source(cache, trainer, datamodule, teacher)
    return in_memory_source(cache, trainer, datamodule, teacher)


__all__ = ["TeacherCache", "TeacherCacheConfig", "teacher_cache_source"]
