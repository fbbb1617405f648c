"""The base image-classification DataModule every kd_lightning data set shares."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from kd_lightning.data.batch import IGNORE_LABEL, Batch
from kd_lightning.data.sampler import ResumableRandomSampler, ResumableShardSampler
from kd_lightning.data.sources import BatchSource
from kd_lightning.data.tensor_dataset import TensorImageDataset, collate_batch
from kd_lightning.data.transforms import augment_batch, to_float_images
from kd_lightning.errors import ConfigError

log = logging.getLogger(__name__)

Split = Literal["train", "val"]


class ImageClassificationDataModule(L.LightningDataModule):
    """Seeded train/val split, test and predict sets, and batched on-device transforms.

    Subclasses load decoded images as ``uint8`` tensors once (:meth:`load_split`); batches then
    stay tensors end to end and are converted, resized and augmented on the device after
    transfer. Normalisation is not done here: each model carries its backbone's own statistics.

    Args:
        data_dir: where the data set lives (or is downloaded to, where the source allows).
        batch_size: training batch size.
        eval_batch_size: batch size for validation/test/predict (defaults to ``batch_size``).
        num_workers: DataLoader workers; 0 is fastest for in-memory tensors.
        val_fraction: share of the training split held out for validation.
        validate_on_test: train on the whole training split and validate on the test split (the
            protocol of RepDistiller and mdistiller). The "best" checkpoint is then selected on the
            test set, so its accuracy is optimistic; the last epoch's is the honest number.
        seed: seed of the train/val split and of the few-shot subset.
        samples_per_class: keep labels for only this many training images per class (few-shot regime).
        unlabeled: what happens to the other training images under ``samples_per_class``:
            ``None`` drops them; ``"rest"`` keeps them as an unlabeled transfer set (label
            :data:`~kd_lightning.data.batch.IGNORE_LABEL`), which the distiller trains on with its
            distillation terms only (Hinton et al.'s "transfer set").
        image_size: resize images to ``image_size × image_size`` (explicit, never implied).
        crop_padding: random pad-and-crop augmentation of the training batches (0 = off).
        hflip: random horizontal flips of the training batches.
        return_indices: training batches carry ``indices``, the positions of the samples in the
            training set (for losses with a per-sample memory, such as CRD).

    Batches are :class:`~kd_lightning.data.batch.Batch` objects. A module that computed something
    ahead of time (a teacher-output or feature cache) serves it through :meth:`use_source`.
    """

    class_names: list[str] = []
    #: Whether loader workers stream the training samples (no images in memory): a cache of
    #: per-sample results is then filled by streaming them (:class:`~kd_lightning.data.sources.StreamedBatchSource`).
    streams_training_set: ClassVar[bool] = False
    #: Whether samples are token ids (text) rather than images: a cache of per-sample results is then
    #: keyed on the ids, with no augmented views to render.
    reads_tokens: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        validate_on_test: bool = False,
        seed: int = 0,
        samples_per_class: int | None = None,
        unlabeled: Literal["rest"] | None = None,
        image_size: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        return_indices: bool = False,
    ) -> None:
        super().__init__()
        # Checked where the values enter: a bad one would otherwise surface deep inside PyTorch.
        at_least: dict[str, tuple[int | None, int]] = {
            "batch_size": (batch_size, 1),
            "num_workers": (num_workers, 0),
            "crop_padding": (crop_padding, 0),
            "eval_batch_size": (eval_batch_size, 1),
            "samples_per_class": (samples_per_class, 1),
            "image_size": (image_size, 1),
        }
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                raise ConfigError(f"data.{name} must be >= {low}, got {value}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if unlabeled not in (None, "rest"):
            raise ConfigError(f"data.unlabeled must be null or 'rest', got {unlabeled!r}")
        if unlabeled is not None and samples_per_class is None:
            raise ConfigError("data.unlabeled: rest needs data.samples_per_class (the labeled images per class)")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.validate_on_test = validate_on_test
        self.seed = seed
        self.samples_per_class = samples_per_class
        self.unlabeled = unlabeled
        self.image_size = image_size
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.return_indices = return_indices
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None
        self.train_sampler: ResumableRandomSampler | ResumableShardSampler | None = None
        self._sampler_state: dict[str, Any] | None = None
        self._sources: dict[Split, BatchSource] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_unlabeled(self) -> bool:
        """Whether training batches may hold samples without a label."""
        return self.unlabeled is not None

    def use_source(self, split: Split, source: BatchSource | None) -> None:
        """Serve the ``split`` batches from ``source`` (e.g. a module's cache); ``None`` restores the images.

        The declared way for a module to feed pre-computed batches through the DataModule: the
        loaders are built here as always, and the source finishes each batch on the device.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if source is None:
            self._sources.pop(split, None)
        else:
            self._sources[split] = source

    def clear_sources(self) -> None:
        """Serve this DataModule's own images again for every split."""
        self._sources.clear()

    def load_split(self, split: str) -> TensorImageDataset:
        """Return the ``"train"`` or ``"test"`` split as decoded ``uint8`` tensors."""
        raise NotImplementedError

    def load_val_split(self) -> TensorImageDataset | None:
        """A separate validation split, for data sets that publish one; ``None`` holds one out of train."""
        return None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            separate_val = self.load_val_split()
            self.train_set, self.val_set = self._split_train_val(self.load_split("train"), separate_val)
            self.train_set.return_indices = self.return_indices
            if self.samples_per_class is not None:
                labeled = int((self.train_set.labels != IGNORE_LABEL).sum())
                log.info(f"label budget: {labeled} labeled + {len(self.train_set) - labeled} unlabeled training images")
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.load_split("test")

    def _split_train_val(
        self, full: TensorImageDataset, separate_val: TensorImageDataset | None = None
    ) -> tuple[TensorImageDataset, TensorImageDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(full), generator=generator)
        held_out = separate_val is not None or self.validate_on_test
        n_val = 0 if held_out else round(len(full) * self.val_fraction)
        val_idx, train_idx = order[:n_val], order[n_val:]
        if self.validate_on_test:
            log.info(f"validate_on_test: training on all {len(train_idx)} training images, validating on test")
            val = self.load_split("test")
        else:
            val = separate_val if separate_val is not None else full.subset(val_idx.sort().values)
        if self.samples_per_class is None:
            return full.subset(train_idx.sort().values), val
        labeled_idx = self._few_shot(full.labels, train_idx, self.samples_per_class)
        if self.unlabeled is None:
            return full.subset(labeled_idx.sort().values), val
        train = full.subset(train_idx.sort().values)
        is_labeled = torch.zeros(len(full), dtype=torch.bool)
        is_labeled[labeled_idx] = True
        labels = torch.where(is_labeled[train_idx.sort().values], train.labels, IGNORE_LABEL)
        return train.with_labels(labels), val

    def _few_shot(self, labels: torch.Tensor, candidates: torch.Tensor, per_class: int) -> torch.Tensor:
        """The first ``per_class`` of each class in the seeded order: class-balanced."""
        chosen = [candidates[labels[candidates] == c][:per_class] for c in range(self.num_classes)]
        short = [self.class_names[c] for c, idx in enumerate(chosen) if len(idx) < per_class]
        if short:
            raise ConfigError(f"data.samples_per_class={self.samples_per_class} exceeds the images of classes {short}")
        return torch.cat(chosen)

    def _loader(self, dataset: Dataset | None, batch_size: int, sampler: Any = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_batch,  # type: ignore[arg-type]  # __getitems__ already gives a whole Batch
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset: TensorImageDataset | BatchSource | None = self._sources.get("train", self.train_set)
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        # Seeded by seed_everything (``torch.initial_seed``), so the config's seed sets the order.
        seed = torch.initial_seed() % 2**62
        # Under DDP Lightning wraps a plain sampler in a DistributedSamplerWrapper (keeping its
        # order); a source that already holds only this rank's shard gets a one-replica sampler.
        rank_local = isinstance(dataset, BatchSource) and dataset.rank_local
        sampler_type = ResumableShardSampler if rank_local else ResumableRandomSampler
        self.train_sampler = sampler_type(len(dataset), seed=seed)
        if self._sampler_state is not None:
            self.train_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        return self._loader(dataset, self.batch_size, self.train_sampler)

    def state_dict(self) -> dict[str, Any]:
        """Where the training sampler stands, so a run resumed mid-epoch sees the same next batches."""
        if self.train_sampler is None or self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        batches_done = progress.processed  # type: ignore[attr-defined]  # a _ProcessedTracker at run time
        if self.trainer.world_size > 1 and not isinstance(self.train_sampler, ResumableShardSampler):
            # Lightning's DistributedSamplerWrapper needs the full permutation to shard it, so
            # under DDP a run resumes exactly at epoch boundaries only (rank-local sources aside).
            batches_done = 0
        return {"train_sampler": self.train_sampler.state_dict(consumed=batches_done * self.batch_size)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sampler_state = state_dict.get("train_sampler")

    def val_dataloader(self) -> DataLoader:
        source = self._sources.get("val")
        if source is None:
            return self._loader(self.val_set, self.eval_batch_size)
        # One replica: a rank-local source is this rank's shard already, not to be split again.
        sampler: Sampler | None = None
        if source.rank_local:
            sampler = DistributedSampler(source, num_replicas=1, rank=0, shuffle=False)
        return self._loader(source, self.eval_batch_size, sampler)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A :class:`Batch` moves field by field (:meth:`Batch.to`); anything else as Lightning moves it."""
        if isinstance(batch, Batch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """uint8 images → float in [0, 1], resized and (in training) augmented, on the device.

        A batch from a :class:`BatchSource` is finished by that source instead: a teacher cache
        renders the stored view its teacher outputs belong to, a feature cache has no images.
        """
        trainer = self.trainer
        training = trainer is not None and trainer.training
        evaluating = trainer is not None and (trainer.validating or trainer.sanity_checking)
        split: Split | None = "train" if training else "val" if evaluating else None
        source = self._sources.get(split) if split is not None else None
        if source is not None and trainer is not None:
            return source.finish(batch, trainer.current_epoch)
        images = to_float_images(batch.inputs, self.image_size)
        if training:
            images = augment_batch(images, self.crop_padding, self.hflip)
        return batch.with_images(images)
