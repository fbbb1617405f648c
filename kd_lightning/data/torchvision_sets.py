"""Small torchvision data sets (MNIST, Fashion-MNIST, CIFAR) held in memory as decoded tensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_info
from torchvision.datasets.utils import extract_archive

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.idx import find_idx, read_idx
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.errors import DataError


class TorchvisionDataModule(ImageClassificationDataModule):
    """A torchvision data set whose decoded images fit in memory.

    Users with internet get torchvision's normal download (``download: true``); a ``data_dir``
    that already holds the files (the original archives or the extracted files) needs none.

    Args:
        download: let torchvision download the data set into ``data_dir`` if it is missing.
        **kwargs: see :class:`ImageClassificationDataModule`.
    """

    dataset_class: type[torchvision.datasets.VisionDataset]

    def __init__(self, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download and not self.is_available():
            for train in (True, False):
                self.dataset_class(self.data_dir, train=train, download=True)

    def is_available(self) -> bool:
        """Whether the data can be read without a download."""
        return False

    def not_found(self, detail: str) -> DataError:
        return DataError(
            f"{self.dataset_class.__name__} not found under {Path(self.data_dir).resolve()}: {detail}. "
            "Set data.download: true, or point data.data_dir at a folder that holds it."
        )


class MNISTDataModule(TorchvisionDataModule):
    """MNIST: 60,000/10,000 handwritten digits, 28×28 grayscale.

    The four IDX files are read directly, gzipped or not, from ``data_dir/<Name>/raw/`` (where
    torchvision downloads them) or from ``data_dir`` itself; no MD5 check, so recompressed copies
    work too.
    """

    dataset_class = torchvision.datasets.MNIST
    class_names = [str(d) for d in range(10)]
    # Folders outside data_dir that may hold a copy, e.g. from an operating-system package.
    system_dirs: tuple[str, ...] = ()
    files = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def _folders(self) -> list[Path]:
        root = Path(self.data_dir)
        return [root / self.dataset_class.__name__ / "raw", root]

    def _locate(self, split: str) -> tuple[Path, Path] | None:
        for folders in (self._folders(), [Path(d) for d in self.system_dirs]):
            images, labels = (find_idx(name, folders) for name in self.files[split])
            if images and labels:
                return images, labels
        return None

    def is_available(self) -> bool:
        return all(self._locate(split) for split in self.files)

    def load_split(self, split: str) -> TensorImageDataset:
        found = self._locate(split)
        if found is None:
            raise self.not_found(
                f"no {' / '.join(self.files[split])} (.gz or not) in {[str(f) for f in self._folders()]}"
            )
        images_path, labels_path = found
        rank_zero_info(f"{self.dataset_class.__name__} {split}: reading {images_path} and {labels_path}")
        return TensorImageDataset(read_idx(images_path).unsqueeze(1), read_idx(labels_path).long())


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: 60,000/10,000 clothing images, 28×28 grayscale, 10 classes.

    When ``data_dir`` does not hold it, the copy installed by Debian's ``dataset-fashion-mnist``
    package (``/usr/share/datasets/fashion-mnist``) is used in place, and the log says so.
    """

    dataset_class = torchvision.datasets.FashionMNIST
    class_names = list(torchvision.datasets.FashionMNIST.classes)
    system_dirs = ("/usr/share/datasets/fashion-mnist",)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10: 50,000/10,000 32×32 colour images, 10 classes (pad-4 crop + flip by default).

    Reads the extracted ``cifar-10-batches-py`` folder, extracting the original
    ``cifar-10-python.tar.gz`` first when only the archive is in ``data_dir``.
    """

    dataset_class = torchvision.datasets.CIFAR10
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, crop_padding: int = 4, hflip: bool = True, **kwargs) -> None:
        super().__init__(crop_padding=crop_padding, hflip=hflip, **kwargs)

    def _paths(self) -> tuple[Path, Path]:
        root = Path(self.data_dir)
        return root / self.dataset_class.base_folder, root / self.dataset_class.filename

    def is_available(self) -> bool:
        folder, archive = self._paths()
        return folder.is_dir() or archive.is_file()

    def load_split(self, split: str) -> TensorImageDataset:
        folder, archive = self._paths()
        if not folder.is_dir():
            if not archive.is_file():
                raise self.not_found(f"neither {folder.name}/ nor {archive.name}")
            rank_zero_info(f"extracting {archive} into {archive.parent}")
            extract_archive(str(archive), str(archive.parent))
        names = self.dataset_class.train_list if split == "train" else self.dataset_class.test_list
        images, labels = [], []
        for name, _ in names:
            batch = _unpickle(folder / name)
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"] if "labels" in batch else batch["fine_labels"])
        self._read_class_names(folder)
        return TensorImageDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))

    def _read_class_names(self, folder: Path) -> None:
        """CIFAR-10's names are fixed above; subclasses read them from the meta file."""


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50,000/10,000 32×32 colour images, 100 classes (the KD literature's benchmark).

    Class names come from the data set's ``meta`` file once it is loaded (placeholders before).
    """

    dataset_class = torchvision.datasets.CIFAR100
    class_names = [f"class_{i}" for i in range(100)]

    def _read_class_names(self, folder: Path) -> None:
        meta = folder / self.dataset_class.meta["filename"]
        if meta.is_file():
            names = _unpickle(meta)[self.dataset_class.meta["key"]]
            if len(names) == len(self.class_names):
                self.class_names = list(names)


def _unpickle(path: Path) -> dict:
    """Read one CIFAR pickle file (the format the data set is published in)."""
    if not path.is_file():
        raise DataError(f"CIFAR file missing: {path}; the extracted folder is incomplete")
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")
