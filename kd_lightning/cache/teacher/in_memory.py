"""The teacher cache of an in-memory training set: every view rendered from the images it holds, one pass."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import lightning as L
import torch
from torch import nn

from kd_lightning.cache._shards import rank_shard
from kd_lightning.cache.keys import tensor_digest
from kd_lightning.cache.teacher.entry import (
    FEATURE,
    LOGITS,
    Teacher,
    TeacherCache,
    TeacherOutputCache,
    ViewTable,
    backbone_key,
    shared_backbone_network,
    view_key_parts,
)
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.sources import BatchSource
from kd_lightning.outputs import ModelOutputs

log = logging.getLogger(__name__)


class TeacherCacheSource(BatchSource):
    """Training batches of this rank's shard with their stored teacher outputs.

    Batches leave the loader as uint8 images and shard positions; :meth:`finish` renders, on the
    device, the view of the epoch that the teacher's outputs were computed on, and attaches those
    outputs, so the student trains on exactly what the teacher saw.
    """

    rank_local = True

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, shard: torch.Tensor, cache: TeacherOutputCache
    ) -> None:
        self.images, self.labels, self.cache = images, labels, cache
        self.shard = shard.to(cache.views.dy.device)  # global training-set index of each position

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(self.labels.index_select(0, idx), images=self.images.index_select(0, idx), indices=idx)

    def finish(self, batch: Batch, epoch: int) -> Batch:
        position = batch.indices
        if position is None:  # __getitems__ always sets them
            raise RuntimeError("a teacher-cache batch arrived without its sample indices")
        images = self.cache.render(batch.inputs, position, epoch)
        indices = self.shard.index_select(0, position)
        return Batch(batch.labels, images=images, indices=indices, teacher=self.cache.teacher_outputs(position, epoch))


@dataclass
class TeacherPass:
    """How stored outputs are computed: the input size, batch size and device, under the trainer's precision.

    Args:
        context: the trainer's precision context factory, so stored outputs equal what an
            uncached step computes under the same precision (``None``: float32).
    """

    image_size: int | None
    batch_size: int
    device: torch.device
    context: Callable[[], AbstractContextManager] | None = None

    def _precision(self) -> AbstractContextManager:
        return self.context() if self.context is not None else torch.autocast(self.device.type, enabled=False)

    @torch.no_grad()
    def over_batches(
        self, fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], batches: Iterable[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``fn`` (a dict of ``[B, ...]`` tensors) over ``batches`` on the device: ``[N, ...]`` float32, CPU."""
        chunks: dict[str, list[torch.Tensor]] = {}
        for x in batches:
            with self._precision():
                out = fn(x.to(self.device))
            for name, t in out.items():
                chunks.setdefault(name, []).append(t.float().cpu())
        return {name: torch.cat(parts) for name, parts in chunks.items()}

    def over_views(
        self, fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], images: torch.Tensor, views: ViewTable
    ) -> dict[str, torch.Tensor]:
        """``fn`` (a dict of ``[B, ...]`` tensors) over every view of every image: ``[V, N, ...]`` float32, CPU."""
        per_view: dict[str, list[torch.Tensor]] = {}
        device_views = views.to(self.device)
        for view in range(views.num_views):
            batches = (
                device_views.render(images[index].to(self.device), index.to(self.device), view, self.image_size)
                for index in self.chunks(len(images))
            )
            for name, t in self.over_batches(fn, batches).items():
                per_view.setdefault(name, []).append(t)
        return {name: torch.stack(parts) for name, parts in per_view.items()}

    def chunks(self, n: int) -> list[torch.Tensor]:
        """Indices ``0 … n − 1`` in order, ``batch_size`` at a time."""
        return list(torch.arange(n).split(self.batch_size))

    @torch.no_grad()
    def head_over_features(self, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """``head`` over stored ``[V, N, D]`` backbone features: ``[V, N, C]`` float32 logits on the CPU."""
        head.to(self.device)
        out = []
        for view in features:
            chunks = []
            for start in range(0, len(view), self.batch_size):
                with self._precision():
                    chunks.append(head(view[start : start + self.batch_size].to(self.device)).float().cpu())
            out.append(torch.cat(chunks))
        return torch.stack(out)


def build_teacher_cache(
    cache: TeacherCache,
    teacher: Callable[[torch.Tensor], ModelOutputs],
    images: torch.Tensor,
    views: ViewTable,
    run: TeacherPass,
) -> TeacherOutputCache:
    """Run ``teacher(x) -> ModelOutputs`` over every view of every image, once."""
    stored = run.over_views(partial(output_tensors, teacher), images, views)
    return stored_outputs(cache, views, run.image_size, stored)


def output_tensors(teacher: Callable[[torch.Tensor], ModelOutputs], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The teacher's outputs on ``x`` by entry name: its logits and each tapped layer."""
    out = teacher(x)
    return {LOGITS: out.logits} | {FEATURE + name: t for name, t in out.features.items()}


def stored_outputs(
    cache: TeacherCache, views: ViewTable, image_size: int | None, stored: dict[str, torch.Tensor]
) -> TeacherOutputCache:
    """:func:`output_tensors` over every view (``[V, N, ...]``) as the entry keeps them."""
    features = {k.removeprefix(FEATURE): t for k, t in stored.items() if k.startswith(FEATURE)}
    return TeacherOutputCache(views, image_size, cache.num_classes, cache.stored_logits(stored[LOGITS]), features)


def in_memory_source(
    cache: TeacherCache, trainer: L.Trainer, datamodule: ImageClassificationDataModule, teacher: Teacher
) -> TeacherCacheSource:
    """Look up or compute the teacher's outputs on every view of this rank's shard of the training images."""
    train_set = datamodule.train_set
    if train_set is None:
        raise RuntimeError("the teacher cache runs after the DataModule's setup")
    padding, hflip, size = datamodule.crop_padding, datamodule.hflip, datamodule.image_size
    num_views = cache.views_for(augments=padding > 0 or hflip)
    shard = rank_shard(len(train_set), trainer.global_rank, trainer.world_size)
    images, labels = train_set.images[shard], train_set.labels[shard]
    views_key = view_key_parts(
        {"images": tensor_digest(images)}, num_views, padding, hflip, size, str(trainer.precision)
    )
    key = cache.key(teacher, views_key, labels=tensor_digest(labels))
    device = trainer.strategy.root_device
    entry = cache.store.get(key, slot="teacher")
    if entry is None:
        log.info(f"teacher cache: {num_views} view(s) of {len(images)} images (key {key})")
        views = ViewTable.sample(len(images), num_views, padding, hflip)
        teacher.network.to(device)
        run = TeacherPass(size, datamodule.eval_batch_size, device, trainer.precision_plugin.forward_context)
        if cache.config.share_backbone_features:
            network = shared_backbone_network(teacher)
            features_key = backbone_key(network, views_key)
            stored = cache.store.get(features_key, slot="teacher-features")
            if stored is None:
                log.info("teacher cache: computing the teacher backbone's features")
                features = run.over_views(lambda x: {"features": network.forward_features(x)}, images, views)
                stored = cache.store.put(features_key, features, slot="teacher-features")
            else:
                log.info("teacher cache: reusing the teacher backbone's features")
            logits = run.head_over_features(network.head, stored["features"])
            outputs = TeacherOutputCache(views, size, cache.num_classes, cache.stored_logits(logits))
        else:
            outputs = build_teacher_cache(cache, teacher, images, views, run)
        entry = cache.store.put(key, outputs.to_entry(), slot="teacher")
    stored_outputs = TeacherOutputCache.from_entry(entry, padding, hflip, size, cache.num_classes, device)
    return TeacherCacheSource(images, labels, shard, stored_outputs)
