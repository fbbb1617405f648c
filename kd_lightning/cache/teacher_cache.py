"""Teacher outputs computed once and reused every epoch, for the exact views the student sees.

A frozen teacher in eval mode is a fixed function, so its outputs can be stored. With random
augmentation the student sees a new view of each image every epoch and the teacher must see
that same view (otherwise it teaches about an image the student never saw). This cache fixes
``num_views`` augmented views per sample in advance: their crop offsets and flips are drawn
once from a seeded generator and stored next to the teacher's outputs, and in epoch ``e`` the
student is trained on view ``e mod num_views`` of every sample, rendered on the device from
those stored parameters with the same functions the random augmentation uses
(:func:`~kd_lightning.data.transforms.crop_at`, :func:`~kd_lightning.data.transforms.flip_where`).
This is the "stored soft labels per crop" design of FKD (Shen & Xing, 2021) rather than
per-epoch replay: replaying fresh per-epoch views would need a teacher forward every epoch and
save nothing. The trade-off: the student sees ``num_views`` distinct views per image instead
of one per epoch (Beyer et al., 2022, find long, consistent "function matching" benefits from
many views, so use ``num_views`` near the epoch count when augmentation matters).

Logits can be stored as top-k values and indices (many-class data sets); the other classes
share the probability mass the teacher gave them at the KD temperature, spread uniformly
(:func:`topk_compress`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

from kd_lightning.cache._shards import rank_shard
from kd_lightning.cache.keys import cache_key, module_digest, tensor_digest
from kd_lightning.cache.store import CacheStore
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.sources import BatchSource
from kd_lightning.data.transforms import crop_at, flip_where, to_float_images
from kd_lightning.outputs import ModelOutputs

log = logging.getLogger(__name__)

VIEW_PIPELINE = "to_float_images+crop_at+flip_where/v1"  # bump when view rendering changes


def topk_compress(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` logits, their class indices, and one fill logit for the other ``C − k`` classes.

    The fill is ``T · log-mean-exp(dropped / T)``: at the distillation temperature ``T`` the
    dropped classes keep exactly their total softened probability mass (spread evenly). Only
    the shape of the tail is lost, and at high ``T`` the tail carries much of the signal, so
    the error grows with ``T`` (measured in benchmarks/RESULTS_performance.md).
    """
    num_classes = logits.shape[-1]
    if not 0 < k < num_classes:
        raise ValueError(f"top-k needs 0 < k < num_classes={num_classes}, got {k}")
    values, indices = logits.topk(k, dim=-1)
    rest = logits.scatter(-1, indices, float("-inf"))
    fill = temperature * ((rest / temperature).logsumexp(dim=-1, keepdim=True) - math.log(num_classes - k))
    return values, indices, fill


def topk_expand(values: torch.Tensor, indices: torch.Tensor, fill: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full logits from :func:`topk_compress`'s output."""
    full = fill.expand(*fill.shape[:-1], num_classes).clone()
    return full.scatter(-1, indices.long(), values)


@dataclass
class ViewTable:
    """Per-sample augmentation parameters of ``num_views`` fixed views: ``[num_views, N]`` each."""

    padding: int
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    hflip: bool = True

    @classmethod
    def sample(cls, n: int, num_views: int, padding: int, hflip: bool, seed: int) -> ViewTable:
        generator = torch.Generator().manual_seed(seed)
        dy = torch.randint(0, 2 * padding + 1, (num_views, n), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (num_views, n), generator=generator)
        flip = (
            torch.rand(num_views, n, generator=generator) < 0.5
            if hflip
            else torch.zeros(num_views, n, dtype=torch.bool)
        )
        return cls(padding, dy, dx, flip, hflip)

    @property
    def num_views(self) -> int:
        return self.dy.shape[0]

    def render(self, images: torch.Tensor, index: torch.Tensor, view: int, image_size: int | None) -> torch.Tensor:
        """View ``view`` of the samples ``index`` from their uint8 ``images``, as float in [0, 1]."""
        x = to_float_images(images, image_size)
        x = crop_at(x, self.padding, self.dy[view, index], self.dx[view, index])
        return flip_where(x, self.flip[view, index]) if self.hflip else x

    def to(self, device: torch.device) -> ViewTable:
        return ViewTable(self.padding, self.dy.to(device), self.dx.to(device), self.flip.to(device), self.hflip)


@dataclass
class TeacherOutputCache:
    """The stored teacher outputs of one shard: ``[num_views, N, ...]`` tensors and their views.

    Either ``logits`` is set, or the top-k triple ``topk_values``/``topk_indices``/``topk_fill``.
    """

    views: ViewTable
    image_size: int | None
    num_classes: int
    logits: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    topk_fill: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def view_of_epoch(self, epoch: int) -> int:
        return epoch % self.views.num_views

    def render(self, images: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The student's (and the stored teacher's) input for this batch in ``epoch``."""
        return self.views.render(images, index, self.view_of_epoch(epoch), self.image_size)

    def outputs(self, index: torch.Tensor, epoch: int) -> ModelOutputs:
        """What the teacher computed on :meth:`render`'s views of the samples ``index``."""
        view = self.view_of_epoch(epoch)
        if self.logits is not None:
            logits = self.logits[view].index_select(0, index)  # index_select: cheaper than t[view, index]
        elif self.topk_values is not None and self.topk_indices is not None and self.topk_fill is not None:
            stored = (self.topk_values, self.topk_indices, self.topk_fill)
            values, indices, fill = (t[view].index_select(0, index) for t in stored)
            logits = topk_expand(values, indices, fill, self.num_classes)
        else:
            raise RuntimeError("the teacher cache holds neither logits nor top-k outputs")
        return ModelOutputs(logits, {name: t[view].index_select(0, index) for name, t in self.features.items()})

    def to_entry(self) -> dict[str, torch.Tensor]:
        entry = {"dy": self.views.dy, "dx": self.views.dx, "flip": self.views.flip}
        names = ("logits", "topk_values", "topk_indices", "topk_fill")
        entry.update({name: getattr(self, name) for name in names if getattr(self, name) is not None})
        entry.update({f"feature.{name}": t for name, t in self.features.items()})
        return entry

    @classmethod
    def from_entry(
        cls, entry: dict[str, torch.Tensor], padding: int, hflip: bool, image_size: int | None, num_classes: int, device
    ) -> TeacherOutputCache:
        views = ViewTable(padding, entry["dy"], entry["dx"], entry["flip"], hflip).to(device)
        names = ("logits", "topk_values", "topk_indices", "topk_fill")
        stored = {name: entry[name].to(device) for name in names if name in entry}
        features = {k.removeprefix("feature."): t.to(device) for k, t in entry.items() if k.startswith("feature.")}
        return cls(views, image_size, num_classes, features=features, **stored)


@torch.no_grad()
def build_teacher_cache(
    teacher_outputs: Any,
    images: torch.Tensor,
    views: ViewTable,
    image_size: int | None,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    topk: int | None = None,
    context: Any = None,
    temperature: float = 1.0,
) -> TeacherOutputCache:
    """Run ``teacher_outputs(x) -> ModelOutputs`` over every view of every image, once.

    Args:
        context: the trainer's precision context factory, so stored outputs equal what an
            uncached step computes under the same precision.
    """
    logits: list[torch.Tensor] = []
    features: dict[str, list[torch.Tensor]] = {}
    for view in range(views.num_views):
        view_logits: list[torch.Tensor] = []
        view_features: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(images), batch_size):
            index = torch.arange(start, min(start + batch_size, len(images)))
            x = views.to(device).render(images[index].to(device), index.to(device), view, image_size)
            with context() if context is not None else torch.autocast(device.type, enabled=False):
                out = teacher_outputs(x)
            view_logits.append(out.logits.float().cpu())
            for name, t in out.features.items():
                view_features.setdefault(name, []).append(t.float().cpu())
        logits.append(torch.cat(view_logits))
        for name, chunks in view_features.items():
            features.setdefault(name, []).append(torch.cat(chunks))
    stacked = torch.stack(logits)
    stacked_features = {name: torch.stack(per_view) for name, per_view in features.items()}
    cache = TeacherOutputCache(views, image_size, num_classes, features=stacked_features)
    if topk is None:
        cache.logits = stacked
    else:
        values, indices, fill = topk_compress(stacked, topk, temperature)
        index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
        cache.topk_values, cache.topk_indices, cache.topk_fill = values, indices.to(index_dtype), fill
    return cache


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
        return Batch(self.labels[idx], images=self.images[idx], indices=idx)

    def finish(self, batch: Batch, epoch: int) -> Batch:
        position = batch.indices
        if position is None:  # __getitems__ always sets them
            raise RuntimeError("a teacher-cache batch arrived without its sample indices")
        images = self.cache.render(batch.inputs, position, epoch)
        indices = self.shard.index_select(0, position)
        return Batch(batch.labels, images=images, indices=indices, teacher=self.cache.outputs(position, epoch))


class TeacherCache:
    """How the distiller caches its teacher's training outputs; builds the :class:`TeacherCacheSource`.

    Entries are keyed by the teacher's weights, the shard's images and labels, the view
    parameters, top-k and the precision, so any change computes a new entry.

    Args:
        store: where entries live (memory, or memory-mapped files on disk).
        num_views: fixed augmented views per sample (1 when the DataModule does not augment).
        topk: store only the top-k logits per sample (``None``: all).
        temperature: the KD temperature, at which top-k storage keeps the dropped mass exact.
        seed: seed of the view parameters.
    """

    def __init__(
        self, store: CacheStore, num_views: int = 1, topk: int | None = None, temperature: float = 1.0, seed: int = 0
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.store = store
        self.num_views = num_views
        self.topk = topk
        self.temperature = temperature
        self.seed = seed

    def source(
        self,
        trainer: L.Trainer,
        teacher: nn.Module,
        num_classes: int,
    ) -> TeacherCacheSource | None:
        """Look up or compute this rank's entry; ``None`` (with the reason logged) when caching cannot apply.

        Args:
            teacher: the frozen teacher; ``teacher(x)`` returns its :class:`ModelOutputs`.
        """
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        if not isinstance(datamodule, ImageClassificationDataModule) or datamodule.train_set is None:
            log.warning("teacher cache not used: it needs a kd_lightning ImageClassificationDataModule")
            return None
        padding, hflip = datamodule.crop_padding, datamodule.hflip
        num_views = self.num_views if padding > 0 or hflip else 1
        if num_views != self.num_views:
            log.info("teacher cache: no random augmentation, so one view per sample")
        shard = rank_shard(len(datamodule.train_set), trainer.global_rank, trainer.world_size)
        images, labels = datamodule.train_set.images[shard], datamodule.train_set.labels[shard]
        key = cache_key(
            kind="teacher",
            teacher=module_digest(teacher),
            data=tensor_digest(images, labels),
            image_size=datamodule.image_size,
            padding=padding,
            hflip=hflip,
            num_views=num_views,
            seed=self.seed,
            topk=self.topk,
            topk_temperature=self.temperature if self.topk else None,
            pipeline=VIEW_PIPELINE,
            precision=str(trainer.precision),
        )
        device = trainer.strategy.root_device
        entry = self.store.get(key, slot="teacher")
        if entry is None:
            log.info(f"teacher cache: {num_views} view(s) of {len(images)} images (key {key})")
            views = ViewTable.sample(len(images), num_views, padding, hflip, self.seed)
            teacher.to(device)
            cache = build_teacher_cache(
                teacher,
                images,
                views,
                datamodule.image_size,
                num_classes,
                datamodule.eval_batch_size,
                device,
                self.topk,
                trainer.precision_plugin.forward_context,
                self.temperature,
            )
            entry = self.store.put(key, cache.to_entry(), slot="teacher")
        cache = TeacherOutputCache.from_entry(entry, padding, hflip, datamodule.image_size, num_classes, device)
        return TeacherCacheSource(images, labels, shard, cache)
