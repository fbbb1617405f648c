"""The base image-classification DataModule every kd_lightning data set shares."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from kd_lightning.data.sampler import ResumableRandomSampler
from kd_lightning.data.tensor_dataset import PreparedBatch, TensorImageDataset, collate_batch
from kd_lightning.data.transforms import augment_batch, to_float_images
from kd_lightning.errors import ConfigError


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
        seed: seed of the train/val split and of the few-shot subset.
        samples_per_class: keep only this many training images per class (few-shot regime).
        image_size: resize images to ``image_size × image_size`` (explicit, never implied).
        crop_padding: random pad-and-crop augmentation of the training batches (0 = off).
        hflip: random horizontal flips of the training batches.
        return_indices: training batches are ``(images, labels, indices)``, the indices of the
            samples in the training set (for losses with a per-sample memory, such as CRD).
    """

    class_names: list[str] = []

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        samples_per_class: int | None = None,
        image_size: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        return_indices: bool = False,
    ) -> None:
        super().__init__()
        # Checked where the values enter: a bad one would otherwise surface deep inside PyTorch.
        at_least = {"batch_size": (batch_size, 1), "num_workers": (num_workers, 0), "crop_padding": (crop_padding, 0)}
        at_least |= {"eval_batch_size": (eval_batch_size, 1), "samples_per_class": (samples_per_class, 1)}
        at_least |= {"image_size": (image_size, 1)}
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                raise ConfigError(f"data.{name} must be >= {low}, got {value}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.samples_per_class = samples_per_class
        self.image_size = image_size
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.return_indices = return_indices
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None
        self.test_set: TensorImageDataset | None = None
        self.train_sampler: ResumableRandomSampler | None = None
        self._sampler_state: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

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
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.load_split("test")

    def _split_train_val(
        self, full: TensorImageDataset, separate_val: TensorImageDataset | None = None
    ) -> tuple[TensorImageDataset, TensorImageDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(full), generator=generator)
        n_val = 0 if separate_val is not None else round(len(full) * self.val_fraction)
        val_idx, train_idx = order[:n_val], order[n_val:]
        if self.samples_per_class is not None:
            train_idx = self._few_shot(full.labels, train_idx)
        val = separate_val if separate_val is not None else full.subset(val_idx.sort().values)
        return full.subset(train_idx.sort().values), val

    def _few_shot(self, labels: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The first ``samples_per_class`` of each class in the seeded order: class-balanced."""
        chosen = [candidates[labels[candidates] == c][: self.samples_per_class] for c in range(self.num_classes)]
        short = [self.class_names[c] for c, idx in enumerate(chosen) if len(idx) < self.samples_per_class]
        if short:
            raise ValueError(f"samples_per_class={self.samples_per_class} exceeds the images of classes {short}")
        return torch.cat(chosen)

    def _loader(
        self, dataset: TensorImageDataset | None, batch_size: int, sampler: ResumableRandomSampler | None = None
    ) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        # Seeded by seed_everything (``torch.initial_seed``), so the config's seed sets the order.
        self.train_sampler = ResumableRandomSampler(len(self.train_set), seed=torch.initial_seed() % 2**62)
        if self._sampler_state is not None:
            self.train_sampler.load_state_dict(self._sampler_state)
            self._sampler_state = None
        # Under DDP Lightning wraps this sampler in a DistributedSamplerWrapper and keeps its order.
        return self._loader(self.train_set, self.batch_size, self.train_sampler)

    def state_dict(self) -> dict[str, Any]:
        """Where the training sampler stands, so a run resumed mid-epoch sees the same next batches."""
        if self.train_sampler is None or self.trainer is None:
            return {}
        batches_done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if self.trainer.world_size > 1:
            # Lightning's DistributedSamplerWrapper needs the full permutation to shard it, so
            # under DDP a run resumes exactly at epoch boundaries only.
            batches_done = 0
        return {"train_sampler": self.train_sampler.state_dict(consumed=batches_done * self.batch_size)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sampler_state = state_dict.get("train_sampler")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int):
        # Batches from a cache (kd_lightning.cache) are already in their final form: pre-computed
        # features, or uint8 images whose views the module renders itself so that a cached teacher
        # output matches the student's view.
        if isinstance(batch, PreparedBatch):
            return batch
        images, *rest = batch
        images = to_float_images(images, self.image_size)
        if self.trainer is not None and self.trainer.training:
            images = augment_batch(images, self.crop_padding, self.hflip)
        return images, *rest
