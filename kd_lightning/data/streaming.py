"""Data sets larger than memory: LitData chunks streamed from disk or object storage, decoded in workers.

:class:`StreamingImageDataModule` keeps the in-memory modules' behaviour (seeded train/val
split, ``samples_per_class``, ``return_indices``, batched on-device augmentation, the teacher
cache, exact resume) and changes only where the pixels come from: a folder written once by
:func:`~kd_lightning.data.prepare.prepare_dataset`, read chunk by chunk with LitData's
``StreamingDataset``/``StreamingDataLoader``, which shard the samples across ranks and loader
workers themselves, so no ``DistributedSampler`` is involved.

A cache of per-sample results (the teacher's outputs) cannot replace the stream as an in-memory
source does: it is a :class:`StreamedBatchSource`, and the DataModule keeps streaming the images,
decoded as the source's fixed views, for the source to finish on the device.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from kd_lightning._distributed import world_size
from kd_lightning.data._litdata import StreamingDataLoader, StreamingDataset
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.decoding import ImageDecoder
from kd_lightning.data.integrity import PREPARE_AGAIN, check_chunk_files
from kd_lightning.data.prepare import read_metadata
from kd_lightning.data.sources import StreamedBatchSource
from kd_lightning.errors import ConfigError, DataError, InvalidDataError


class StreamedSplit:
    """Which samples of a prepared split a set holds: positions and labels, no pixels.

    It has the interface :meth:`ImageClassificationDataModule._split_train_val` uses on an
    in-memory set (``len``, ``labels``, ``subset``), so the seeded split and the few-shot subset
    are the in-memory modules' own code.
    """

    def __init__(self, input_dir: str, labels: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        self.input_dir = input_dir
        self.labels = labels
        self.positions = torch.arange(len(labels)) if positions is None else positions
        self.return_indices = False

    @property
    def is_whole(self) -> bool:
        """Whether every prepared sample is in, in order (no LitData subset needed)."""
        return bool(torch.equal(self.positions, torch.arange(len(self.positions)))) if len(self.positions) else False

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> torch.Tensor:
        # What needs every image in memory at once (the frozen-backbone feature cache) cannot run on
        # a streamed set: say so rather than fail on a missing attribute.
        raise ConfigError(
            "this needs the whole data set in memory (feature_cache); a streamed data set cannot provide it: "
            "turn the cache off or use an in-memory data module"
        )

    def subset(self, indices: torch.Tensor) -> StreamedSplit:
        return StreamedSplit(self.input_dir, self.labels[indices], self.positions[indices])

    def with_labels(self, labels: torch.Tensor) -> StreamedSplit:
        """The same samples under other labels (some replaced by ``IGNORE_LABEL``: the unlabeled transfer set)."""
        return StreamedSplit(self.input_dir, labels, self.positions)


class _DecodingStreamingDataset(StreamingDataset):
    """A ``StreamingDataset`` whose items are decoded by an :class:`ImageDecoder` (in the loader worker).

    Items are ``(image, label, index, view)``. With ``num_views`` set (the training stream of a
    :class:`StreamedBatchSource`), LitData's epoch ``e`` (counted from 1) is decoded as fixed view
    ``(e - 1) mod num_views``: the view is taken from the counter LitData restores with its loader
    state, at the moment the items are decoded, so it is exact on a resumed run too, where the
    trainer's epoch is not yet advanced when the first batches are fetched. ``view`` fixes the view
    instead (a teacher cache's own pass). Without either, ``view`` is ``None`` and LitData's epoch
    seeds a fresh crop every epoch.
    """

    def __init__(
        self,
        input_dir: str,
        decoder: ImageDecoder,
        num_views: int | None = None,
        chunk_files: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_dir, **kwargs)
        self.decoder = decoder
        self.num_views = num_views
        self.view: int | None = None
        self.chunk_files = chunk_files or []

    def __getitem__(self, index: Any) -> Any:
        view = self.view
        if view is None and self.num_views is not None:
            view = (self.current_epoch - 1) % self.num_views
        try:
            item = super().__getitem__(index)
            return *self.decoder(item, self.current_epoch if view is None else view), view
        except Exception as err:  # damaged bytes surface as any of several types, in LitData or the decoder
            raise InvalidDataError(
                f"{self._where(index)}: a stored sample cannot be read ({err}); {PREPARE_AGAIN}"
            ) from err

    def _where(self, index: Any) -> str:
        """The chunk file that holds ``index`` where it is known, else the split's folder."""
        chunk = getattr(index, "chunk_index", None)
        if isinstance(chunk, int) and 0 <= chunk < len(self.chunk_files):
            return f"chunk file {Path(self.input_dir.path or '') / self.chunk_files[chunk]}"
        return f"the prepared split {self.input_dir.path or self.input_dir.url}"


class _Collate:
    """Stack decoded samples into a :class:`Batch` (a class, so spawned loader workers can pickle it)."""

    def __init__(self, with_indices: bool) -> None:
        self.with_indices = with_indices

    def __call__(self, items: list[tuple[torch.Tensor, int, int, int | None]]) -> Batch:
        # default_collate stacks straight into shared memory in a loader worker, so the batch
        # reaches the main process without the copy that pickling a plain tensor would make.
        images = default_collate([image for image, _, _, _ in items])
        labels = torch.tensor([label for _, label, _, _ in items], dtype=torch.long)
        indices = torch.tensor([index for _, _, index, _ in items], dtype=torch.long) if self.with_indices else None
        views = {view for _, _, _, view in items}
        if len(views) != 1:  # a loader iteration is one LitData epoch, so never expected
            raise RuntimeError(f"a streamed batch mixes the fixed views {sorted(map(str, views))}")
        return Batch(labels, images=images, indices=indices, view=views.pop())


class StreamingImageDataModule(ImageClassificationDataModule):
    """A data set prepared by ``kd-lightning prepare``, streamed from ``data_dir`` (a folder or object-storage URL).

    ``data_dir`` holds ``train/`` and optionally ``val/`` (else ``val_fraction`` of train is held
    out, seeded) and ``test/`` (else testing uses ``val/``). Images are decoded in the loader
    workers and resized there to ``image_size`` (one size, so that they stack), then converted
    and augmented on the device like every other kd_lightning data set.

    Args:
        image_size: side of the decoded images; needed when the stored images differ in size.
        random_resized_crop: training images are Inception-style random crops (8-100 % of the area)
            resized to ``image_size``, evaluation images are resized to ``image_size / 0.875`` and
            centre-cropped (the ImageNet recipe); else every image is resized whole.
        num_workers: loader worker processes (decoding happens there; use several).
        cache_dir: local cache for chunks streamed from object storage (LitData's default if unset).
        storage_options: credentials/options passed to LitData for object storage.
        drop_remainder: under DDP, accept that LitData drops the training samples that do not fill
            a last global batch (``world_size × batch_size``; others each epoch, as the order is
            reshuffled). Off, a training set of another size is refused, since every sample would
            then no longer be seen once per epoch; one process never drops any.
        **kwargs: see :class:`ImageClassificationDataModule`.
    """

    streams_training_set = True

    def __init__(
        self,
        data_dir: str = "data",
        image_size: int | None = None,
        random_resized_crop: bool = False,
        num_workers: int = 4,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
        drop_remainder: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir=data_dir, image_size=image_size, num_workers=num_workers, **kwargs)
        self.random_resized_crop = random_resized_crop
        self.drop_remainder = drop_remainder
        self.cache_dir = cache_dir
        self.storage_options = storage_options or {}
        self.root = data_dir.rstrip("/")
        self.metadata = {"train": read_metadata(f"{self.root}/train", self.storage_options)}
        # Read now, not in setup(): the CLI links num_classes into the model when both are built.
        self.class_names = list(self.metadata["train"]["class_names"])
        self.channels = int(self.metadata["train"]["channels"])
        self.train_loader: StreamingDataLoader | None = None
        self._loader_state: dict[str, Any] | None = None
        # Chunk file names of each local split, checked whole: named when a sample cannot be read.
        self.chunk_files: dict[str, list[str]] = {}

    def _split_dir(self, split: str) -> str | None:
        if split not in self.metadata:
            try:
                self.metadata[split] = read_metadata(f"{self.root}/{split}", self.storage_options)
            except DataError:
                return None
            if self.metadata[split]["class_names"] != self.class_names:
                raise ConfigError(f"{self.root}/{split} was prepared with other classes than {self.root}/train")
        return f"{self.root}/{split}"

    def _streamed(self, split: str) -> StreamedSplit | None:
        folder = self._split_dir(split)
        if folder is None:
            return None
        if "://" not in folder:
            self.chunk_files[folder] = check_chunk_files(Path(folder))
        return StreamedSplit(folder, torch.tensor(self.metadata[split]["labels"], dtype=torch.long))

    def load_split(self, split: str) -> StreamedSplit:  # type: ignore[override]
        found = self._streamed(split) or (self._streamed("val") if split == "test" else None)
        if found is None:
            raise DataError(f"no {split} split under {self.root}: write one with kd-lightning prepare --split {split}")
        return found

    def load_val_split(self) -> StreamedSplit | None:  # type: ignore[override]
        return self._streamed("val")

    def _dataset(
        self,
        split: StreamedSplit,
        train: bool,
        shuffle: bool | None = None,
        view_seed: int | None = None,
        num_views: int | None = None,
    ) -> _DecodingStreamingDataset:
        """The split as a decoding ``StreamingDataset``.

        Args:
            train: training views (random crops), shuffled unless ``shuffle`` says otherwise.
            view_seed: seed of the random crops in place of the run's (a teacher cache's fixed views).
            num_views: how many fixed views the epochs cycle through (a teacher cache's training stream).
        """
        shuffle = train if shuffle is None else shuffle
        decoder = ImageDecoder(
            channels=self.channels,
            image_size=self.image_size,
            random_resized_crop=self.random_resized_crop and train,
            center_crop=self.random_resized_crop and not train,
            seed=self._seed() if view_seed is None else view_seed,
            positions=split.positions.numpy(),
            labels=split.labels.numpy(),
        )
        dataset = _DecodingStreamingDataset(
            split.input_dir,
            decoder,
            num_views=num_views,
            chunk_files=self.chunk_files.get(split.input_dir),
            shuffle=shuffle,
            # On one process every sample is seen once per epoch. Under DDP every rank must run the
            # same number of steps, so LitData drops the last partial global batch (LitData's
            # drop_last=False would hand it to one rank alone, which then waits for the others
            # forever): _check_whole_global_batches refuses that unless drop_remainder is set. An
            # unshuffled training pass (a cache being computed) must see every sample, and has no collectives.
            drop_last=shuffle and world_size() > 1,
            seed=self._seed(),
            cache_dir=self.cache_dir,
            storage_options=self.storage_options,
            # One item deserialised per read: LitData's default for dict items decodes windows of
            # items, and a shuffled read would re-decode a whole window for each sample.
            batch_decode=0,
        )
        if split.is_whole:
            return dataset
        subset = dataset.subset(split.positions.tolist())
        # LitData reads a local folder "POSIX-fast" by default: at every switch of chunk it calls
        # posix_fadvise on the next chunk files and maps them anew. A seeded split is a subset of
        # many short runs of samples, each of which counts as a chunk, so that work would come every
        # few samples. Only for subsets: on a whole set, turning it off makes LitData read a whole
        # chunk file for each sample of a chunk that two loader workers share.
        subset.posix_fast = None
        return subset

    def _check_whole_global_batches(self, num_samples: int, batch_size: int) -> None:
        """Under DDP, refuse a training set LitData would not show whole each epoch, unless told to accept it."""
        ranks = world_size()
        dropped = num_samples % (ranks * batch_size)
        if ranks > 1 and dropped and not self.drop_remainder:
            raise ConfigError(
                f"under DDP, {dropped} of the {num_samples} training samples would be left out of every epoch: "
                f"they do not fill a global batch of {ranks} ranks x batch_size {batch_size}; choose "
                f"batch_size, devices or samples_per_class so that {ranks * batch_size} divides the training "
                "set, or set drop_remainder: true to accept it"
            )

    def _seed(self) -> int:
        # Seeded by seed_everything (``torch.initial_seed``), like the in-memory sampler.
        return torch.initial_seed() % 2**31

    def _streaming_loader(
        self, split: object, batch_size: int, train: bool, views: StreamedBatchSource | None = None
    ) -> StreamingDataLoader:
        # The base class types its splits as in-memory datasets; here they are StreamedSplit stand-ins.
        if not isinstance(split, StreamedSplit):
            raise RuntimeError("call setup() before asking for a dataloader")
        if train:
            self._check_whole_global_batches(len(split), batch_size)
        options: dict[str, Any] = dict(
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=_Collate(train and (split.return_indices or views is not None)),
            # Its own generator for the workers' base seed: LitData's loader creates its iterator
            # lazily, after the resume has restored the global RNG, so a draw from that RNG would
            # shift every later augmentation of a resumed run.
            generator=torch.Generator().manual_seed(self._seed()),
        )
        if views is None:
            return StreamingDataLoader(self._dataset(split, train), **options)
        dataset = self._dataset(split, train, view_seed=views.view_seed, num_views=views.num_views)
        return StreamingDataLoader(dataset, **options)

    def view_loader(self, view: int, view_seed: int, batch_size: int) -> StreamingDataLoader:
        """The training samples unshuffled, each once across all ranks, as fixed view ``view`` with their indices.

        What a teacher cache computes its outputs on: the random crop of every sample is the one
        the training loader decodes in the epochs of ``view`` under a :class:`StreamedBatchSource`
        with this ``view_seed``. Under DDP the ranks share the samples unevenly (no collectives run).
        """
        split = self.train_set
        if not isinstance(split, StreamedSplit):
            raise RuntimeError("call setup() before asking for a dataloader")
        dataset = self._dataset(split, train=True, shuffle=False, view_seed=view_seed)
        dataset.view = view
        return StreamingDataLoader(
            dataset, batch_size=batch_size, num_workers=self.num_workers, collate_fn=_Collate(with_indices=True)
        )

    def data_digest(self, split: StreamedSplit) -> str:
        """Digest of the prepared data a split streams: LitData's index (its chunks) and ``prepare``'s metadata.

        Keys a cache of per-sample results together with the split's positions and labels.
        LitData's index lists every chunk file with its size and sample count; a data set prepared
        again in place from other images of exactly the same byte sizes would go unnoticed.
        """
        dataset = StreamingDataset(split.input_dir, cache_dir=self.cache_dir, storage_options=self.storage_options)
        index = Path(dataset.input_dir.path or split.input_dir) / "index.json"
        metadata = read_metadata(split.input_dir, self.storage_options)
        h = hashlib.blake2b(index.read_bytes(), digest_size=16)
        h.update(repr(sorted(metadata.items())).encode())
        return h.hexdigest()

    def train_dataloader(self) -> StreamingDataLoader | DataLoader:
        source = self._sources.get("train")
        if source is not None and not isinstance(source, StreamedBatchSource):
            return super().train_dataloader()  # a module's in-memory batch source (see use_source)
        self.train_loader = self._streaming_loader(self.train_set, self.batch_size, train=True, views=source)
        if self._loader_state is not None:
            self.train_loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return self.train_loader

    def val_dataloader(self) -> StreamingDataLoader | DataLoader:
        if "val" in self._sources:
            return super().val_dataloader()
        return self._streaming_loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> StreamingDataLoader:
        return self._streaming_loader(self.test_set, self.eval_batch_size, train=False)

    def predict_dataloader(self) -> StreamingDataLoader:
        return self._streaming_loader(self.test_set, self.eval_batch_size, train=False)

    def state_dict(self) -> dict[str, Any]:
        """LitData's loader state, so a run resumed mid-epoch streams the same next batches."""
        if self.train_loader is None:
            return {}
        return {"train_loader": self.train_loader.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loader_state = state_dict.get("train_loader")
