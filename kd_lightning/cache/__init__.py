"""Caches of what frozen networks compute: backbone features and teacher outputs."""

from kd_lightning.cache.feature_cache import FeatureCacheCallback
from kd_lightning.cache.keys import cache_key, module_digest, tensor_digest
from kd_lightning.cache.store import CacheStore
from kd_lightning.cache.teacher_cache import TeacherCacheCallback, TeacherOutputCache

__all__ = [
    "CacheStore",
    "FeatureCacheCallback",
    "TeacherCacheCallback",
    "TeacherOutputCache",
    "cache_key",
    "module_digest",
    "tensor_digest",
]
