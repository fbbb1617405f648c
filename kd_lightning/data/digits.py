"""scikit-learn's bundled handwritten digits: the embedded default data set (no download)."""

from __future__ import annotations

import torch

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.tensor_dataset import TensorImageDataset

# The test split is fixed whatever ``seed`` says, so test numbers stay comparable across seeds.
TEST_SPLIT_SEED = 12345


class DigitsDataModule(ImageClassificationDataModule):
    """1,797 real 8×8 grayscale digits (10 classes) shipped inside scikit-learn.

    scikit-learn has no official test split, so a fixed ``test_fraction`` is held out first;
    the rest is split into train/val by ``seed``.

    Args:
        test_fraction: share of all images held out as the test set.
        **kwargs: see :class:`ImageClassificationDataModule`.
    """

    class_names = [str(d) for d in range(10)]

    def __init__(self, test_fraction: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.test_fraction = test_fraction

    def load_split(self, split: str) -> TensorImageDataset:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Pixel values are counts 0-16; scale to the 0-255 range of ordinary images.
        images = torch.from_numpy(digits.images).mul(255.0 / 16.0).round().to(torch.uint8).unsqueeze(1)
        labels = torch.from_numpy(digits.target).long()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED))
        n_test = round(len(labels) * self.test_fraction)
        chosen = order[:n_test] if split == "test" else order[n_test:]
        chosen = chosen.sort().values
        return TensorImageDataset(images[chosen], labels[chosen])
