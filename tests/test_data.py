"""The base DataModule on digits: seeded splits, few-shot subsets, batched transforms."""

import pytest
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.data.transforms import augment_batch, random_crop, to_float_images


def test_digits_splits_are_disjoint_seeded_and_complete() -> None:
    dm = DigitsDataModule(val_fraction=0.1, seed=3)
    dm.setup()
    sizes = len(dm.train_set), len(dm.val_set), len(dm.test_set)
    assert sum(sizes) == 1797 and dm.num_classes == 10
    assert dm.train_set.images.dtype == torch.uint8 and dm.train_set.images.shape[1:] == (1, 8, 8)
    again = DigitsDataModule(val_fraction=0.1, seed=3)
    again.setup()
    assert torch.equal(again.val_set.images, dm.val_set.images)
    other = DigitsDataModule(val_fraction=0.1, seed=4)
    other.setup()
    assert torch.equal(other.test_set.labels, dm.test_set.labels), "test split must not depend on seed"
    assert not torch.equal(other.val_set.labels, dm.val_set.labels)


def test_samples_per_class_is_class_balanced() -> None:
    dm = DigitsDataModule(samples_per_class=5)
    dm.setup("fit")
    assert torch.equal(torch.bincount(dm.train_set.labels), torch.full((10,), 5))
    with pytest.raises(ValueError, match="exceeds"):
        DigitsDataModule(samples_per_class=1000).setup("fit")


def test_loader_yields_whole_batches_from_memory() -> None:
    dm = DigitsDataModule(batch_size=32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape == (32, 1, 8, 8) and batch.labels.shape == (32,)
    assert batch.images.dtype == torch.uint8 and batch.indices is None and batch.teacher is None


def test_float_conversion_and_resize() -> None:
    images = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = to_float_images(images, image_size=16)
    assert out.shape == (2, 1, 16, 16) and torch.allclose(out, torch.ones_like(out))


def test_random_crop_shifts_each_sample_independently() -> None:
    torch.manual_seed(0)
    images = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(16, 1, 1, 1)
    cropped = random_crop(images, padding=2)
    assert cropped.shape == images.shape
    assert len({tuple(c.flatten().tolist()) for c in cropped}) > 1
    assert torch.equal(random_crop(images, 0), images)
    assert augment_batch(images, 2, hflip=True).shape == images.shape
