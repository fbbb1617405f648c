"""The base image-classification DataModule every kd_lightning data set shares."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from kd_lightning.data.tensor_dataset import TensorImageDataset, collate_batch
from kd_lightning.data.transforms import augment_batch, to_float_images


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
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if samples_per_class is not None and samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_split(self, split: str) -> TensorImageDataset:
        """Return the ``"train"`` or ``"test"`` split as decoded ``uint8`` tensors."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set, self.val_set = self._split_train_val(self.load_split("train"))
            self.train_set.return_indices = self.return_indices
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.load_split("test")

    def _split_train_val(self, full: TensorImageDataset) -> tuple[TensorImageDataset, TensorImageDataset]:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(full), generator=generator)
        n_val = round(len(full) * self.val_fraction)
        val_idx, train_idx = order[:n_val], order[n_val:]
        if self.samples_per_class is not None:
            train_idx = self._few_shot(full.labels, train_idx)
        return full.subset(train_idx.sort().values), full.subset(val_idx.sort().values)

    def _few_shot(self, labels: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The first ``samples_per_class`` of each class in the seeded order: class-balanced."""
        chosen = [candidates[labels[candidates] == c][: self.samples_per_class] for c in range(self.num_classes)]
        short = [self.class_names[c] for c, idx in enumerate(chosen) if len(idx) < self.samples_per_class]
        if short:
            raise ValueError(f"samples_per_class={self.samples_per_class} exceeds the images of classes {short}")
        return torch.cat(chosen)

    def _loader(self, dataset: TensorImageDataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int):
        images, *rest = batch
        images = to_float_images(images, self.image_size)
        if self.trainer is not None and self.trainer.training:
            images = augment_batch(images, self.crop_padding, self.hflip)
        return images, *rest
