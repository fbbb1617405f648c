"""Caches of what frozen networks compute: backbone features and teacher outputs."""

from kd_lightning.cache.feature_cache import FeatureCache
from kd_lightning.cache.keys import cache_key, module_digest, tensor_digest
from kd_lightning.cache.store import CacheStore
from kd_lightning.cache.teacher import TeacherCache, TeacherCacheConfig, teacher_cache_source

__all__ = [
    "CacheStore",
    "FeatureCache",
    "TeacherCache",
    "TeacherCacheConfig",
    "cache_key",
    "module_digest",
    "tensor_digest",
    "teacher_cache_source",
]
