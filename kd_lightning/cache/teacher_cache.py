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

A streamed training set (:class:`~kd_lightning.data.streaming.StreamingImageDataModule`) holds no
images; its cache is :mod:`kd_lightning.cache.streamed_teacher_cache`, with the same views, keyed
by sample index and filled as the samples stream by.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

from kd_lightning.cache._shards import rank_shard
from kd_lightning.cache.keys import backbone_digest, cache_key, module_digest, tensor_digest
from kd_lightning.cache.store import CacheStore
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.sources import BatchSource
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.data.transforms import crop_at, flip_where, to_float_images
from kd_lightning.errors import ConfigError
from kd_lightning.models.classifier import Classifier
from kd_lightning.models.feature_taps import FeatureTaps
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
def over_views(
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    images: torch.Tensor,
    views: ViewTable,
    image_size: int | None,
    batch_size: int,
    device: torch.device,
    context: Any = None,
) -> dict[str, torch.Tensor]:
    """``fn`` (a dict of ``[B, ...]`` tensors) over every view of every image: ``[V, N, ...]`` float32 on the CPU.

    Args:
        context: the trainer's precision context factory, so stored outputs equal what an
            uncached step computes under the same precision.
    """
    per_view: dict[str, list[torch.Tensor]] = {}
    device_views = views.to(device)
    for view in range(views.num_views):
        chunks: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(images), batch_size):
            index = torch.arange(start, min(start + batch_size, len(images)))
            x = device_views.render(images[index].to(device), index.to(device), view, image_size)
            with context() if context is not None else torch.autocast(device.type, enabled=False):
                out = fn(x)
            for name, t in out.items():
                chunks.setdefault(name, []).append(t.float().cpu())
        for name, parts in chunks.items():
            per_view.setdefault(name, []).append(torch.cat(parts))
    return {name: torch.stack(parts) for name, parts in per_view.items()}


def build_teacher_cache(
    teacher_outputs: Callable[[torch.Tensor], ModelOutputs],
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
    """Run ``teacher_outputs(x) -> ModelOutputs`` over every view of every image, once."""

    def outputs(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = teacher_outputs(x)
        return {"logits": out.logits} | {f"feature.{name}": t for name, t in out.features.items()}

    stored = over_views(outputs, images, views, image_size, batch_size, device, context)
    features = {k.removeprefix("feature."): t for k, t in stored.items() if k.startswith("feature.")}
    return cached_logits(stored["logits"], views, image_size, num_classes, topk, temperature, features)


def cached_logits(
    logits: torch.Tensor,
    views: ViewTable,
    image_size: int | None,
    num_classes: int,
    topk: int | None = None,
    temperature: float = 1.0,
    features: dict[str, torch.Tensor] | None = None,
) -> TeacherOutputCache:
    """A :class:`TeacherOutputCache` of ``[V, N, C]`` logits, stored whole or as top-k."""
    cache = TeacherOutputCache(views, image_size, num_classes, features=features or {})
    if topk is None:
        cache.logits = logits
    else:
        values, indices, fill = topk_compress(logits, topk, temperature)
        index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
        cache.topk_values, cache.topk_indices, cache.topk_fill = values, indices.to(index_dtype), fill
    return cache


@torch.no_grad()
def head_over_features(head: nn.Module, features: torch.Tensor, batch_size: int, device: torch.device, context: Any):
    """``head`` over stored ``[V, N, D]`` backbone features in batches: ``[V, N, C]`` float32 logits on the CPU."""
    head.to(device)
    out = []
    for view in features:
        chunks = []
        for start in range(0, len(view), batch_size):
            with context() if context is not None else torch.autocast(device.type, enabled=False):
                chunks.append(head(view[start : start + batch_size].to(device)).float().cpu())
        out.append(torch.cat(chunks))
    return torch.stack(out)


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
        share_backbone: also store the teacher backbone's features of every view (keyed by the
            backbone alone) and compute the logits from them with the teacher's head. Teachers
            that share a frozen backbone (linear probes of one pretrained network: other seeds,
            label budgets, heads) then share one backbone pass, at ``N × views × feature_dim``
            floats of storage. For teachers without feature taps.
    """

    def __init__(
        self,
        store: CacheStore,
        num_views: int = 1,
        topk: int | None = None,
        temperature: float = 1.0,
        seed: int = 0,
        share_backbone: bool = False,
    ) -> None:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.store = store
        self.num_views = num_views
        self.topk = topk
        self.temperature = temperature
        self.seed = seed
        self.share_backbone = share_backbone

    def views_for(self, augments: bool) -> int:
        """The fixed views to store: ``num_views``, or one when the training data is not randomly augmented."""
        if augments or self.num_views == 1:
            return self.num_views
        log.info("teacher cache: no random augmentation, so one view per sample")
        return 1

    def source(
        self,
        trainer: L.Trainer,
        teacher: nn.Module,
        num_classes: int,
    ) -> BatchSource | None:
        """Look up or compute this rank's entry; ``None`` (with the reason logged) when caching cannot apply.

        Args:
            teacher: the frozen teacher; ``teacher(x)`` returns its :class:`ModelOutputs`.
        """
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        if not isinstance(datamodule, ImageClassificationDataModule) or datamodule.train_set is None:
            log.warning("teacher cache not used: it needs a kd_lightning ImageClassificationDataModule")
            return None
        if not isinstance(datamodule.train_set, TensorImageDataset):
            # Imported here: streaming needs LitData, an optional extra.
            from kd_lightning.cache.streamed_teacher_cache import streamed_source

            return streamed_source(self, trainer, teacher, num_classes)
        padding, hflip = datamodule.crop_padding, datamodule.hflip
        num_views = self.views_for(augments=padding > 0 or hflip)
        shard = rank_shard(len(datamodule.train_set), trainer.global_rank, trainer.world_size)
        images, labels = datamodule.train_set.images[shard], datamodule.train_set.labels[shard]
        view_parts = dict(
            images=tensor_digest(images),
            image_size=datamodule.image_size,
            padding=padding,
            hflip=hflip,
            num_views=num_views,
            seed=self.seed,
            pipeline=VIEW_PIPELINE,
            precision=str(trainer.precision),
        )
        key = cache_key(
            kind="teacher",
            teacher=teacher_digest(teacher),
            labels=tensor_digest(labels),
            topk=self.topk,
            topk_temperature=self.temperature if self.topk else None,
            **view_parts,
        )
        device = trainer.strategy.root_device
        entry = self.store.get(key, slot="teacher")
        if entry is None:
            log.info(f"teacher cache: {num_views} view(s) of {len(images)} images (key {key})")
            views = ViewTable.sample(len(images), num_views, padding, hflip, self.seed)
            teacher.to(device)
            size, batch_size = datamodule.image_size, datamodule.eval_batch_size
            context = trainer.precision_plugin.forward_context
            if self.share_backbone:
                network = shared_backbone_network(teacher)
                features_key = cache_key(kind="teacher-features", backbone=backbone_digest(network), **view_parts)
                entry = self.store.get(features_key, slot="teacher-features")
                if entry is None:
                    log.info("teacher cache: computing the teacher backbone's features")
                    features = over_views(
                        lambda x: {"features": network.forward_features(x)},
                        images,
                        views,
                        size,
                        batch_size,
                        device,
                        context,
                    )
                    entry = self.store.put(features_key, features, slot="teacher-features")
                else:
                    log.info("teacher cache: reusing the teacher backbone's features")
                logits = head_over_features(network.head, entry["features"], batch_size, device, context)
                cache = cached_logits(logits, views, size, num_classes, self.topk, self.temperature)
            else:
                cache = build_teacher_cache(
                    teacher, images, views, size, num_classes, batch_size, device, self.topk, context, self.temperature
                )
            entry = self.store.put(key, cache.to_entry(), slot="teacher")
        cache = TeacherOutputCache.from_entry(entry, padding, hflip, datamodule.image_size, num_classes, device)
        return TeacherCacheSource(images, labels, shard, cache)


def teacher_digest(teacher: nn.Module) -> str:
    """What decides the teacher's outputs: its state, its network's input resize and pooled layers, its taps."""
    network = getattr(teacher, "network", None)
    taps = getattr(teacher, "taps", None)
    return cache_key(
        state=module_digest(teacher),  # already covers the network's tensors: add only its settings
        input_size=network.input_size if isinstance(network, Classifier) else None,
        feature_layers=list(network.feature_layers) if isinstance(network, Classifier) else None,
        taps=list(taps.layers) if isinstance(taps, FeatureTaps) else None,
    )


def shared_backbone_network(teacher: nn.Module) -> Classifier:
    """The teacher's classifier, when its outputs are its head over its backbone's features alone."""
    network = getattr(teacher, "network", None)
    if not isinstance(network, Classifier):
        raise ConfigError("the teacher cache can share the backbone only for a kd_lightning Classifier teacher")
    taps = getattr(teacher, "taps", None)
    if isinstance(taps, FeatureTaps):
        raise ConfigError(
            "the teacher cache cannot share the backbone: the losses tap the teacher's layers "
            f"{list(taps.layers)}, which backbone features do not hold; turn cache_backbone_features off"
        )
    return network
