"""torchvision data sets (MNIST, Fashion-MNIST, CIFAR, Flowers-102) held in memory as decoded tensors.

CIFAR is published as Python pickles. ``pickle.load`` runs whatever a file names, so a crafted
batch file would run code; the files are read with :class:`CifarUnpickler`, which admits only
what the format holds (plain containers, strings, numbers and NumPy arrays) and refuses the rest.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_info

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.image_folder import decode_images
from kd_lightning.data.mnist_format import find_idx, read_idx
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.errors import DataError, InvalidDataError


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
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dim() != 3 or images.dtype != torch.uint8:
            shape = tuple(images.shape)
            raise InvalidDataError(f"{images_path} holds {images.dtype} of shape {shape}, not uint8 images")
        if labels.shape != images.shape[:1]:
            raise InvalidDataError(
                f"{labels_path} holds {tuple(labels.shape)} labels for the {len(images)} images of {images_path}"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.class_names):
            raise InvalidDataError(f"{labels_path} holds labels outside 0..{len(self.class_names) - 1}")
        return TensorImageDataset(images.unsqueeze(1), labels.long())


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
            extract_cifar_archive(archive)
        names = self.dataset_class.train_list if split == "train" else self.dataset_class.test_list
        images, labels = [], []
        for name, _ in names:
            batch_images, batch_labels = read_cifar_batch(folder / name, len(self.class_names))
            images.append(batch_images)
            labels.append(batch_labels)
        self._read_class_names(folder)
        return TensorImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))

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
            names = _unpickle(meta).get(self.dataset_class.meta["key"])
            if isinstance(names, list) and len(names) == len(self.class_names):
                self.class_names = [str(n) for n in names]


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR file holds: dicts, lists, strings, bytes, numbers, NumPy arrays.

    Every other global a pickle names (a function to call, a class to build) is refused, so a
    crafted file cannot run code. NumPy arrays are rebuilt by ``_reconstruct``/``_frombuffer``
    (per pickle protocol) and ``ndarray``/``dtype``; protocol-2 pickles of bytes use ``_codecs.encode``.
    """

    ALLOWED = frozenset(
        {
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of the CIFAR format")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """Read one CIFAR pickle file (the format the data set is published in), running no code.

    Raises:
        DataError: the file is missing.
        InvalidDataError: the file is empty, truncated, not a CIFAR pickle, or names anything
            beyond the format (refused unrun).
    """
    if not path.is_file():
        raise DataError(f"CIFAR file missing: {path}; the extracted folder is incomplete")
    try:
        with open(path, "rb") as f:
            content = CifarUnpickler(f, encoding="latin1").load()
    except Exception as err:  # pickle raises several types for truncated, foreign and refused files
        detail = str(err).strip() or type(err).__name__
        raise InvalidDataError(
            f"cannot read CIFAR file {path}: {detail}. The file is empty, truncated, not a CIFAR pickle, "
            "or crafted to run code (refused unread); extract the original archive again."
        ) from err
    if not isinstance(content, dict):
        raise InvalidDataError(f"{path} is not a CIFAR file: it holds a {type(content).__name__}, not a dict")
    return content


def extract_cifar_archive(archive: Path) -> None:
    """Extract a CIFAR ``.tar.gz`` next to itself with tarfile's ``data`` filter: members that would
    land outside the folder (``../``, absolute paths, links out) or be devices are refused."""
    rank_zero_info(f"extracting {archive} into {archive.parent}")
    if not hasattr(tarfile, "data_filter"):  # Python < 3.10.12 / 3.11.4
        raise InvalidDataError(
            f"cannot extract {archive} safely on this Python (no tarfile data filter): unpack it by hand"
        )
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(archive.parent, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InvalidDataError(f"cannot extract {archive}: {err}. Download the archive again.") from err


def read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 [N, 3, 32, 32] images, int64 [N] labels)`` of one CIFAR batch file, checked."""
    batch = _unpickle(path)
    data = batch.get("data")
    labels = batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise InvalidDataError(f"{path} is not a CIFAR batch: 'data' must be a uint8 [N, 3072] array, got {shape}")
    labels = np.asarray(labels if isinstance(labels, list | np.ndarray) else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < num_classes):
        raise InvalidDataError(
            f"{path} is not a CIFAR batch of {num_classes} classes: its labels do not match its {len(data)} images"
        )
    return data.reshape(-1, 3, 32, 32), labels


class Flowers102DataModule(ImageClassificationDataModule):
    """Oxford Flowers-102: 102 flower species, official 1,020 train / 1,020 val / 6,149 test split.

    Reads torchvision's layout (``data_dir/flowers-102/{jpg/, imagelabels.mat, setid.mat}``,
    downloaded with ``download: true``), decodes every image once at ``image_size``.

    Args:
        download: let torchvision download the data set into ``data_dir`` if it is missing.
        image_size: decoded size of every image (the originals differ in size).
        **kwargs: see :class:`ImageClassificationDataModule`.
    """

    class_names = list(torchvision.datasets.Flowers102.classes)

    def __init__(
        self, download: bool = False, image_size: int = 64, crop_padding: int = 0, hflip: bool = True, **kwargs
    ):
        super().__init__(image_size=image_size, crop_padding=crop_padding, hflip=hflip, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            torchvision.datasets.Flowers102(self.data_dir, download=True)

    def _split(self, split: str) -> TensorImageDataset:
        try:
            dataset = torchvision.datasets.Flowers102(self.data_dir, split=split, download=False)
        except RuntimeError as err:
            raise DataError(
                f"Flowers-102 not found under {Path(self.data_dir).resolve()}: {err} Set data.download: true."
            ) from err
        return TensorImageDataset(decode_images(dataset._image_files, self.image_size), torch.tensor(dataset._labels))

    def load_split(self, split: str) -> TensorImageDataset:
        return self._split(split)

    def load_val_split(self) -> TensorImageDataset:
        return self._split("val")
