"""The teacher cache of a streamed training set: outputs keyed by sample index, computed once, memory-mapped.

A streamed set holds no images, and its random-resized crop is drawn in the loader workers from
``(seed, epoch, sample position)``. So the fixed views are split in two: the crop of view ``v`` is
the one the decoder draws with the cache's seed in place of the run's and ``v`` in place of the
epoch, and the pad-and-crop offsets and flips of view ``v`` come from the same seeded
:class:`~kd_lightning.cache.teacher.entry.ViewTable` as in memory, looked up by sample index on the
device. The teacher runs once over every view of every sample, streamed unshuffled; in epoch ``e``
the DataModule streams view ``e mod views`` (the view follows LitData's epoch counter, restored
with the loader, and travels in the batch) and each batch gets that view's rows of its samples.

``"disk"`` entries are memory-mapped files (:mod:`kd_lightning.cache.mapped`); under DDP every
rank computes the samples LitData streams to it into one entry on the shared directory, and after
a barrier every rank reads all of it, since LitData hands each sample to another rank every epoch.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch

from kd_lightning._distributed import on_every_rank
from kd_lightning.cache._disk import NoRoomError, removed_if_the_disk_fills
from kd_lightning.cache.keys import tensor_digest
from kd_lightning.cache.mapped import Layout, RowWriter, allocate, open_entry, publish
from kd_lightning.cache.teacher.entry import (
    FEATURE,
    FILLED,
    VIEW_SEED,
    Teacher,
    TeacherCache,
    TeacherOutputCache,
    ViewTable,
    view_key_parts,
)
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.sources import StreamedBatchSource
from kd_lightning.data.transforms import to_float_images
from kd_lightning.errors import ConfigError, InvalidDataError
from kd_lightning.outputs import ModelOutputs

if TYPE_CHECKING:
    from kd_lightning.data.streaming import StreamedSplit, StreamingImageDataModule

log = logging.getLogger(__name__)
# Stores ``rows`` as rows ``index`` of view ``view`` of the entry's tensor ``name``.
WriteRows = Callable[[str, int, torch.Tensor, torch.Tensor], None]

STREAMED_DECODING = "decode_image+inception_crop(seed/view/position)/v1"  # bump when decoding changes


class StreamedTeacherCacheSource(StreamedBatchSource):
    """Finishes streamed training batches: renders each sample's view of the epoch and attaches its stored outputs.

    The stored outputs stay where they are (memory, or a memory-mapped file on the host); each
    batch's rows are read by sample index and copied to the batch's device.
    """

    def __init__(self, cache: TeacherOutputCache, device: torch.device) -> None:
        self.cache = cache
        self.views = cache.views.to(device)
        self.num_views = cache.views.num_views
        self.view_seed = VIEW_SEED

    def finish(self, batch: Batch, epoch: int) -> Batch:
        # The view comes with the batch, from where its images were decoded, not from ``epoch``: on
        # a resumed run the trainer's epoch advances only after the first batches are fetched.
        index, view = batch.indices, batch.view
        if index is None or view is None:  # the DataModule streams both for a StreamedBatchSource
            raise RuntimeError("a streamed teacher-cache batch arrived without its sample indices or view")
        images = self.views.render(batch.inputs, index, view, self.cache.image_size)
        stored = self.cache.teacher_outputs(index.cpu(), view)  # it takes an epoch; epoch v < views streams view v
        device = images.device
        teacher = ModelOutputs(
            stored.logits.to(device, non_blocking=True),
            {name: t.to(device, non_blocking=True) for name, t in stored.features.items()},
        )
        return Batch(batch.labels, images=images, indices=index, teacher=teacher)


def streamed_source(
    cache: TeacherCache, trainer: L.Trainer, datamodule: ImageClassificationDataModule, teacher: Teacher
) -> StreamedTeacherCacheSource:
    """Look up or compute the teacher's outputs for every view of every streamed training sample."""
    data = cast("StreamingImageDataModule", datamodule)  # the DataModule said it streams
    refuse_unsupported(cache, trainer)
    if data.train_set is None:
        raise RuntimeError("the teacher cache runs after the DataModule's setup")
    split = cast("StreamedSplit", data.train_set)  # what a streaming DataModule's setup makes
    padding, hflip, resized_crop = data.crop_padding, data.hflip, data.random_resized_crop
    num_views = cache.views_for(augments=padding > 0 or hflip or resized_crop)
    samples = dict(
        data=data.data_digest(split),
        positions=tensor_digest(split.positions),
        channels=data.channels,
        random_resized_crop=resized_crop,
        decoding=STREAMED_DECODING,
    )
    views_key = view_key_parts(samples, num_views, padding, hflip, data.image_size, str(trainer.precision))
    key = cache.key(teacher, views_key, labels=tensor_digest(split.labels))
    filler = _CacheFiller(cache, trainer, teacher, data, num_views)
    if cache.store.storage == "memory":
        entry = cache.store.get(key, slot="teacher")
        if entry is None:
            entry = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in filler.layout(key).items()}
            filler.fill(functools.partial(_write_into, entry), key)
            _check_filled(entry[FILLED], key)
            entry = cache.store.put(key, entry, slot="teacher")
    else:
        entry = _disk_entry(cache, trainer, key, filler)
    stored = TeacherOutputCache.from_entry(entry, padding, hflip, data.image_size, cache.num_classes)
    return StreamedTeacherCacheSource(stored, trainer.strategy.root_device)


def refuse_unsupported(cache: TeacherCache, trainer: L.Trainer) -> None:
    if cache.config.share_backbone_features:
        raise ConfigError(
            "teacher_cache.share_backbone_features is for in-memory data sets: on a streamed one turn it off "
            "(the teacher cache then stores the teacher's outputs themselves)"
        )
    if cache.store.storage == "memory" and trainer.world_size > 1:
        raise ConfigError(
            "under DDP the teacher cache of a streamed data set needs teacher_cache.storage: disk on a directory "
            "every rank shares (LitData streams each sample to another rank every epoch, so every rank reads "
            "every output)"
        )


def _disk_entry(cache: TeacherCache, trainer: L.Trainer, key: str, filler: _CacheFiller) -> dict[str, torch.Tensor]:
    """The entry's memory-mapped files, filled first (by every rank, into one shared entry) when missing.

    Each step between two synchronisations runs through :func:`~kd_lightning._distributed.on_every_rank`:
    a rank that fails (rank 0 allocating or publishing, any rank decoding or running the teacher) makes
    every rank raise its error, instead of leaving the others waiting for it. A full disk removes the
    unpublished entry; any other failure leaves it for inspection.
    """
    strategy, cache_dir, setting = trainer.strategy, cache.store.cache_dir, cache.store.setting
    final = cache_dir / f"{key}.streamed"
    names = filler.names()
    # Rank 0 decides, so that no rank skips the steps the others synchronise in.
    if not strategy.broadcast(final.is_dir()):
        partial = cache_dir / strategy.broadcast(f"{key}.partial-{uuid.uuid4().hex[:8]}")
        size = 0

        def allocated() -> None:
            nonlocal size
            layout = filler.layout(key)  # on every rank: LitData may synchronise the ranks when a loader starts
            size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())
            if trainer.is_global_zero:
                _warn_of_stale_partials(cache_dir, key, partial)
                allocate(partial, layout, setting)
                log.info(f"teacher cache: filling {partial} (a run killed before it is published leaves it behind)")

        def filled() -> None:
            if not partial.is_dir():
                _not_shared(cache, trainer)
            with removed_if_the_disk_fills(cache_dir, size, setting), RowWriter(partial, names) as rows:
                filler.fill(rows.write, key)  # flushed on exit, for the ranks of other nodes to read

        def published() -> None:
            if trainer.is_global_zero:
                _check_filled(open_entry(partial, names, verify=False)[FILLED], key)
                with removed_if_the_disk_fills(cache_dir, size, setting):
                    publish(partial, final)

        try:
            on_every_rank(trainer, allocated)
            on_every_rank(trainer, filled)
            on_every_rank(trainer, published)
        except NoRoomError:
            if trainer.is_global_zero:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        except Exception:
            if trainer.is_global_zero and partial.is_dir():
                log.warning(f"teacher cache: the fill failed; delete its unpublished folder {partial}")
            raise

    def opened() -> dict[str, torch.Tensor]:
        if not final.is_dir():
            _not_shared(cache, trainer)
        entry = open_entry(final, names, verify=trainer.is_global_zero)  # the files are shared: one rank reads them
        if not bool(entry[FILLED].all()):
            missing = int((~entry[FILLED]).sum())
            raise InvalidDataError(
                f"teacher cache {final} has no outputs for {missing} sample views (damaged): delete it to rebuild"
            )
        return entry

    return on_every_rank(trainer, opened)


def _write_into(entry: dict[str, torch.Tensor], name: str, view: int, index: torch.Tensor, rows: torch.Tensor) -> None:
    entry[name][view, index] = rows.to(entry[name].dtype)


def _warn_of_stale_partials(cache_dir: Path, key: str, partial: Path) -> None:
    stale = sorted(str(p) for p in cache_dir.glob(f"{key}.partial-*") if p != partial)
    if stale:
        log.warning(
            f"teacher cache: {len(stale)} unpublished folder(s) of this entry already exist, left by a fill that was "
            f"killed or is still running elsewhere (then one of the two fills is wasted); delete them once no run "
            f"fills this cache: {', '.join(stale)}"
        )


def _not_shared(cache: TeacherCache, trainer: L.Trainer) -> None:
    raise ConfigError(
        f"rank {trainer.global_rank} does not see the teacher cache rank 0 wrote under {cache.store.cache_dir}: "
        "under DDP teacher_cache.directory must be a folder all ranks share (e.g. a network file system)"
    )


def _check_filled(filled: torch.Tensor, key: str) -> None:
    """After filling: every sample view must have been streamed to some rank."""
    if not bool(filled.all()):
        missing = int((~filled).sum())
        raise RuntimeError(f"teacher cache {key}: {missing} sample views were streamed to no rank and have no outputs")


class _CacheFiller:
    """Fills a streamed cache entry: its layout, then the teacher over every view of the samples this rank streams."""

    def __init__(
        self,
        cache: TeacherCache,
        trainer: L.Trainer,
        teacher: Teacher,
        datamodule: StreamingImageDataModule,
        num_views: int,
    ) -> None:
        self.cache, self.trainer, self.teacher, self.datamodule = cache, trainer, teacher, datamodule
        self.num_views = num_views
        self.device = trainer.strategy.root_device
        self.context: Any = trainer.precision_plugin.forward_context

    def names(self) -> set[str]:
        """The entry's tensor names, known without running the teacher (what a cache hit checks)."""
        layers = self.teacher.taps.layers if self.teacher.taps is not None else ()
        return {*self.cache.layout(1, 0, {name: () for name in layers}), FILLED}

    def layout(self, key: str) -> Layout:
        """The entry's tensors (probing the tapped teacher layers' shapes on one batch), logged with their size."""
        n = len(self.datamodule.train_set)  # type: ignore[arg-type]  # a StreamedSplit after setup
        layout = self.cache.layout(self.num_views, n, self.feature_shapes())
        layout[FILLED] = ((self.num_views, n), torch.bool)
        size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())
        log.info(f"teacher cache {key}: {self.num_views} view(s) of {n} samples, {size / 2**30:.2f} GiB")
        return layout

    @torch.no_grad()
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the teacher layers the losses tap, from one streamed batch (none without taps)."""
        if self.teacher.taps is None or not self.teacher.taps.layers:
            return {}
        batch = next(iter(self.datamodule.view_loader(0, VIEW_SEED, batch_size=2)))
        self.teacher.network.to(self.device)
        with self.context():
            features = self.teacher(to_float_images(batch.inputs.to(self.device), self.datamodule.image_size)).features
        return {name: tuple(t.shape[1:]) for name, t in features.items()}

    @torch.no_grad()
    def fill(self, write: WriteRows, key: str) -> None:
        """Write the view parameters (rank 0 of DDP, for all) and the outputs of the samples this rank streams.

        Every rank draws the same seeded view table itself rather than reading rank 0's: the ranks
        of other nodes would otherwise need rank 0's writes flushed before they could start.
        """
        datamodule = self.datamodule
        n = len(datamodule.train_set)  # type: ignore[arg-type]  # a StreamedSplit after setup
        table = ViewTable.sample(n, self.num_views, datamodule.crop_padding, datamodule.hflip)
        if self.trainer.is_global_zero:
            for view in range(self.num_views):
                for name, rows in table.to_entry().items():
                    write(name, view, torch.arange(n), rows[view])
        views = table.to(self.device)
        self.teacher.network.to(self.device)
        for view in range(self.num_views):
            log.info(f"teacher cache: view {view + 1}/{self.num_views} of {n} streamed samples (key {key})")
            for batch in datamodule.view_loader(view, VIEW_SEED, datamodule.eval_batch_size):
                index = batch.indices
                x = views.render(batch.inputs.to(self.device), index.to(self.device), view, datamodule.image_size)
                with self.context():
                    outputs = self.teacher(x)
                self._write(write, view, index, outputs)

    def _write(self, write: WriteRows, view: int, index: torch.Tensor, outputs: ModelOutputs) -> None:
        for name, t in outputs.features.items():
            write(FEATURE + name, view, index, t.float().cpu())
        for name, rows in self.cache.stored_logits(outputs.logits.float().cpu()).items():
            write(name, view, index, rows)
        write(FILLED, view, index, torch.ones(len(index), dtype=torch.bool))
