"""The teacher cache of a streamed training set: outputs keyed by sample index, computed once, memory-mapped.

The in-memory cache (:mod:`kd_lightning.cache.teacher_cache`) renders its fixed views from
images it holds. A streamed set holds no images, and its random-resized crop is drawn in the
loader workers from ``(seed, epoch, sample position)``. So here the fixed views are split in two:
the crop of view ``v`` is the one the decoder draws with the cache's seed in place of the run's
and ``v`` in place of the epoch (a pure function of the sample), and the pad-and-crop offsets and
flips of view ``v`` come from the same seeded :class:`~kd_lightning.cache.teacher_cache.ViewTable`
as in memory, looked up by sample index on the device. The teacher runs once over every view of
every sample, streamed unshuffled; in epoch ``e`` the DataModule streams view ``e mod num_views``
(:class:`~kd_lightning.data.streaming.StreamedBatchSource`; the view follows LitData's epoch
counter, restored with the loader, and travels in the batch) and each batch gets that view's rows
of its sample indices, so the student trains on exactly the views the stored outputs belong to.

Storage is ``[num_views, N, ...]`` tensors indexed by the sample's index in the training split
(whose prepared positions are part of the key): whole logits, or the top-k values, class indices
and fill logit of :func:`~kd_lightning.cache.teacher_cache.topk_compress` (ImageNet: 1000 classes,
k = 10 takes 64 bytes a sample and view instead of 4 kB), and the teacher layers the losses tap
(CRD's pooled embedding: 2 kB a sample and view for a 512-wide ResNet-34). ``"disk"`` entries are memory-mapped
files (:mod:`kd_lightning.cache.mapped`); under DDP every rank computes the samples LitData
streams to it into one file on the shared ``cache_dir``, and after a barrier every rank reads
all of it, since LitData hands each sample to another rank every epoch.
"""

from __future__ import annotations

import functools
import logging
import math
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from torch import nn

from kd_lightning.cache.keys import cache_key, tensor_digest
from kd_lightning.cache.mapped import Layout, RowWriter, allocate, open_entry, publish
from kd_lightning.cache.teacher_cache import (
    VIEW_PIPELINE,
    TeacherCache,
    TeacherOutputCache,
    ViewTable,
    teacher_digest,
    topk_compress,
)
from kd_lightning.data.batch import Batch
from kd_lightning.data.streaming import StreamedBatchSource, StreamedSplit, StreamingImageDataModule
from kd_lightning.data.transforms import to_float_images
from kd_lightning.errors import ConfigError, InvalidDataError
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.outputs import ModelOutputs

log = logging.getLogger(__name__)
T = TypeVar("T")
# Stores ``rows`` as rows ``index`` of view ``view`` of the entry's tensor ``name``.
WriteRows = Callable[[str, int, torch.Tensor, torch.Tensor], None]

FEATURE = "feature."  # entry names of the tapped teacher layers

# Bump when decoding or view rendering of streamed samples changes.
STREAMED_PIPELINE = f"decode_image+inception_crop(seed/view/position)+{VIEW_PIPELINE}/v1"


class StreamedTeacherCacheSource(StreamedBatchSource):
    """Finishes streamed training batches: renders each sample's view of the epoch and attaches its stored outputs.

    The stored outputs stay where they are (memory, or a memory-mapped file on the host); each
    batch's rows are read by sample index (one small copy of the indices to the host) and copied
    to the batch's device.
    """

    def __init__(self, cache: TeacherOutputCache, device: torch.device, view_seed: int) -> None:
        self.cache = cache
        self.views = cache.views.to(device)
        self.num_views = cache.views.num_views
        self.view_seed = view_seed

    def finish(self, batch: Batch, epoch: int) -> Batch:
        # The view comes with the batch, from where its images were decoded, not from ``epoch``: on
        # a resumed run the trainer's epoch advances only after the first batches are fetched.
        index, view = batch.indices, batch.view
        if index is None or view is None:  # the DataModule streams both for a StreamedBatchSource
            raise RuntimeError("a streamed teacher-cache batch arrived without its sample indices or view")
        images = self.views.render(batch.inputs, index, view, self.cache.image_size)
        stored = self.cache.outputs(index.cpu(), view)  # it takes an epoch; epoch v < num_views streams view v
        device = images.device
        teacher = ModelOutputs(
            stored.logits.to(device, non_blocking=True),
            {name: t.to(device, non_blocking=True) for name, t in stored.features.items()},
        )
        return Batch(batch.labels, images=images, indices=index, teacher=teacher)


def streamed_source(
    settings: TeacherCache, trainer: L.Trainer, teacher: nn.Module, num_classes: int
) -> StreamedTeacherCacheSource:
    """Look up or compute the teacher's outputs for every view of every streamed training sample."""
    datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
    if not isinstance(datamodule, StreamingImageDataModule) or not isinstance(datamodule.train_set, StreamedSplit):
        raise ConfigError("the teacher cache needs a kd_lightning DataModule (in-memory or StreamingImageDataModule)")
    _refuse_unsupported(settings, trainer)
    split = datamodule.train_set
    padding, hflip, resized_crop = datamodule.crop_padding, datamodule.hflip, datamodule.random_resized_crop
    num_views = settings.views_for(augments=padding > 0 or hflip or resized_crop)
    key = cache_key(
        kind="streamed-teacher",
        teacher=teacher_digest(teacher),
        data=datamodule.data_digest(split),
        positions=tensor_digest(split.positions),
        labels=tensor_digest(split.labels),
        channels=datamodule.channels,
        image_size=datamodule.image_size,
        random_resized_crop=resized_crop,
        padding=padding,
        hflip=hflip,
        num_views=num_views,
        seed=settings.seed,
        pipeline=STREAMED_PIPELINE,
        precision=str(trainer.precision),
        topk=settings.topk,
        topk_temperature=settings.temperature if settings.topk else None,
    )
    filler = _CacheFiller(settings, trainer, teacher, datamodule, num_views, num_classes)
    if settings.store.storage == "memory":
        entry = settings.store.get(key, slot="teacher")
        if entry is None:
            entry = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in filler.layout(key).items()}
            filler.fill(functools.partial(_write_into, entry), key)
            _check_filled(entry["filled"], key)
            entry = settings.store.put(key, entry, slot="teacher")
    else:
        entry = _disk_entry(settings, trainer, key, filler)
    views = ViewTable(padding, entry["dy"], entry["dx"], entry["flip"], hflip)
    stored = {name: entry[name] for name in ("logits", "topk_values", "topk_indices", "topk_fill") if name in entry}
    features = {name.removeprefix(FEATURE): t for name, t in entry.items() if name.startswith(FEATURE)}
    cache = TeacherOutputCache(views, datamodule.image_size, num_classes, features=features, **stored)
    return StreamedTeacherCacheSource(cache, trainer.strategy.root_device, settings.seed)


def _refuse_unsupported(settings: TeacherCache, trainer: L.Trainer) -> None:
    if settings.share_backbone:
        raise ConfigError(
            "cache_backbone_features is for in-memory data sets: on a streamed one turn it off (the teacher cache "
            "then stores the teacher's outputs themselves)"
        )
    if settings.store.storage == "memory" and trainer.world_size > 1:
        raise ConfigError(
            "under DDP the teacher cache of a streamed data set needs teacher_cache: disk on a cache_dir every rank "
            "shares (LitData streams each sample to another rank every epoch, so every rank reads every output)"
        )


def _layout(
    num_views: int, n: int, num_classes: int, topk: int | None, feature_shapes: dict[str, tuple[int, ...]]
) -> Layout:
    """Names, shapes and dtypes of a streamed entry: the view parameters, the outputs, and which rows are filled."""
    layout: Layout = {
        "dy": ((num_views, n), torch.int64),
        "dx": ((num_views, n), torch.int64),
        "flip": ((num_views, n), torch.bool),
        "filled": ((num_views, n), torch.bool),
    }
    if topk is None:
        layout["logits"] = ((num_views, n, num_classes), torch.float32)
    else:
        if not 0 < topk < num_classes:
            raise ConfigError(f"cache_topk must be in 1..{num_classes - 1} (fewer than the classes), got {topk}")
        index_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32
        layout["topk_values"] = ((num_views, n, topk), torch.float32)
        layout["topk_indices"] = ((num_views, n, topk), index_dtype)
        layout["topk_fill"] = ((num_views, n, 1), torch.float32)
    for name, shape in feature_shapes.items():
        layout[FEATURE + name] = ((num_views, n, *shape), torch.float32)
    return layout


def _disk_entry(settings: TeacherCache, trainer: L.Trainer, key: str, filler: _CacheFiller) -> dict[str, torch.Tensor]:
    """The entry's memory-mapped files, filled first (by every rank, into one shared file) when missing.

    Each step between two synchronisations runs through :func:`_on_every_rank`: a rank that fails
    (rank 0 allocating or publishing, any rank decoding or running the teacher) makes every rank
    raise its error, instead of leaving the others waiting for it.
    """
    strategy, cache_dir = trainer.strategy, settings.store.cache_dir
    final = cache_dir / f"{key}.streamed"
    names = filler.names()
    # Rank 0 decides, so that no rank skips the steps the others synchronise in.
    if not strategy.broadcast(final.is_dir()):
        partial = cache_dir / strategy.broadcast(f"{key}.partial-{uuid.uuid4().hex[:8]}")

        def allocated() -> None:
            layout = filler.layout(key)  # on every rank: LitData may synchronise the ranks when a loader starts
            if trainer.is_global_zero:
                _warn_of_stale_partials(cache_dir, key, partial)
                allocate(partial, layout)
                log.info(f"teacher cache: filling {partial} (a run killed before it is published leaves it behind)")

        def filled() -> None:
            if not partial.is_dir():
                _not_shared(settings, trainer)
            with RowWriter(partial, names) as rows:  # flushed on exit, for the ranks of other nodes to read
                filler.fill(rows.write, key)

        def published() -> None:
            if trainer.is_global_zero:
                _check_filled(open_entry(partial, names)["filled"], key)
                publish(partial, final)

        try:
            _on_every_rank(trainer, allocated)
            _on_every_rank(trainer, filled)
            _on_every_rank(trainer, published)
        except Exception:
            if trainer.is_global_zero and partial.is_dir():
                log.warning(f"teacher cache: the fill failed; delete its unpublished folder {partial}")
            raise

    def opened() -> dict[str, torch.Tensor]:
        if not final.is_dir():
            _not_shared(settings, trainer)
        entry = open_entry(final, names)
        if not bool(entry["filled"].all()):
            missing = int((~entry["filled"]).sum())
            raise InvalidDataError(
                f"teacher cache {final} has no outputs for {missing} sample views (damaged): delete it to rebuild"
            )
        return entry

    return _on_every_rank(trainer, opened)


def _write_into(entry: dict[str, torch.Tensor], name: str, view: int, index: torch.Tensor, rows: torch.Tensor) -> None:
    entry[name][view, index] = rows.to(entry[name].dtype)


def _on_every_rank(trainer: L.Trainer, step: Callable[[], T]) -> T:
    """Run ``step`` on this rank, then agree across ranks: if any rank failed, every rank raises its error.

    The agreement is a ``min`` reduction (of the first failing rank, if any), so it synchronises the
    ranks as a barrier would; on a failure that rank's exception is then broadcast to the others.
    """
    strategy = trainer.strategy
    if trainer.world_size == 1:
        return step()
    error: Exception | None = None
    try:
        result = step()
    except Exception as err:  # agreed on below, then raised on every rank
        error = err
    mine = trainer.global_rank if error is not None else trainer.world_size
    first = int(strategy.reduce(torch.tensor(mine, device=strategy.root_device), reduce_op="min").item())
    if first == trainer.world_size:
        return result
    if error is not None and first == trainer.global_rank:
        strategy.broadcast(_portable(error), src=first)
        raise error
    raise strategy.broadcast(RuntimeError("replaced by the failing rank's error"), src=first)


def _portable(error: Exception) -> Exception:
    """``error``, or a ``RuntimeError`` with its message when it cannot be sent to the other ranks (pickled)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # any failure to round-trip: send the message alone
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _warn_of_stale_partials(cache_dir: Path, key: str, partial: Path) -> None:
    stale = sorted(str(p) for p in cache_dir.glob(f"{key}.partial-*") if p != partial)
    if stale:
        log.warning(
            f"teacher cache: {len(stale)} unpublished folder(s) of this entry already exist, left by a fill that was "
            f"killed or is still running elsewhere (then one of the two fills is wasted); delete them once no run "
            f"fills this cache: {', '.join(stale)}"
        )


def _not_shared(settings: TeacherCache, trainer: L.Trainer) -> None:
    raise ConfigError(
        f"rank {trainer.global_rank} does not see the teacher cache rank 0 wrote under {settings.store.cache_dir}: "
        "under DDP cache_dir must be a folder all ranks share (e.g. a network file system)"
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
        settings: TeacherCache,
        trainer: L.Trainer,
        teacher: nn.Module,
        datamodule: StreamingImageDataModule,
        num_views: int,
        num_classes: int,
    ) -> None:
        self.settings, self.trainer, self.teacher, self.datamodule = settings, trainer, teacher, datamodule
        self.num_views, self.num_classes = num_views, num_classes
        self.device = trainer.strategy.root_device
        self.context: Any = trainer.precision_plugin.forward_context

    def names(self) -> set[str]:
        """The entry's tensor names, known without running the teacher (what a cache hit checks)."""
        taps = getattr(self.teacher, "taps", None)
        layers = taps.layers if isinstance(taps, FeatureTaps) else ()
        return set(_layout(1, 0, self.num_classes, self.settings.topk, {name: () for name in layers}))

    def layout(self, key: str) -> Layout:
        """The entry's tensors (probing the tapped teacher layers' shapes on one batch), logged with their size."""
        n = len(self.datamodule.train_set)  # type: ignore[arg-type]  # a StreamedSplit after setup
        layout = _layout(self.num_views, n, self.num_classes, self.settings.topk, self.feature_shapes())
        size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layout.values())
        log.info(f"teacher cache {key}: {self.num_views} view(s) of {n} samples, {size / 2**30:.2f} GiB")
        return layout

    @torch.no_grad()
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of the teacher layers the losses tap, from one streamed batch (none without taps)."""
        taps = getattr(self.teacher, "taps", None)
        if not isinstance(taps, FeatureTaps) or not taps.layers:
            return {}
        batch = next(iter(self.datamodule.view_loader(0, self.settings.seed, batch_size=2)))
        self.teacher.to(self.device)
        with self.context():
            features = self.teacher(to_float_images(batch.inputs.to(self.device), self.datamodule.image_size)).features
        return {name: tuple(t.shape[1:]) for name, t in features.items()}

    @torch.no_grad()
    def fill(self, write: WriteRows, key: str) -> None:
        """Write the view parameters (rank 0 of DDP, for all) and the outputs of the samples this rank streams.

        Every rank draws the same seeded view table itself rather than reading rank 0's: the ranks
        of other nodes would otherwise need rank 0's writes flushed before they could start.
        """
        datamodule, settings = self.datamodule, self.settings
        n = len(datamodule.train_set)  # type: ignore[arg-type]  # a StreamedSplit after setup
        table = ViewTable.sample(n, self.num_views, datamodule.crop_padding, datamodule.hflip, settings.seed)
        if self.trainer.is_global_zero:
            for view in range(self.num_views):
                for name, rows in (("dy", table.dy), ("dx", table.dx), ("flip", table.flip)):
                    write(name, view, torch.arange(n), rows[view])
        device = self.device
        views = table.to(device)
        self.teacher.to(device)
        for view in range(self.num_views):
            log.info(f"teacher cache: view {view + 1}/{self.num_views} of {n} streamed samples (key {key})")
            for batch in datamodule.view_loader(view, settings.seed, datamodule.eval_batch_size):
                index = batch.indices
                x = views.render(batch.inputs.to(device), index.to(device), view, datamodule.image_size)
                with self.context():
                    outputs = self.teacher(x)
                self._write(write, view, index, outputs)

    def _write(self, write: WriteRows, view: int, index: torch.Tensor, outputs: ModelOutputs) -> None:
        logits = outputs.logits.float().cpu()
        for name, t in outputs.features.items():
            write(FEATURE + name, view, index, t.float().cpu())
        if self.settings.topk is None:
            write("logits", view, index, logits)
        else:
            values, indices, fill = topk_compress(logits, self.settings.topk, self.settings.temperature)
            write("topk_values", view, index, values)
            write("topk_indices", view, index, indices)
            write("topk_fill", view, index, fill)
        write("filled", view, index, torch.ones(len(index), dtype=torch.bool))
