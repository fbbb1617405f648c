"""MNIST-style IDX files, CIFAR pickles and image folders, all written by the tests themselves (offline)."""

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)
from kd_lightning.data.mnist_format import read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format: zero bytes, a type code, the rank, big-endian sizes, then the raw data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
        out[split] = images, labels
    return out["train"], out["t10k"]


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files_from_the_torchvision_layout(tmp_path: Path, gz: bool) -> None:
    (train_images, train_labels), (test_images, _) = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.0)
    assert dm.is_available()
    dm.setup()
    assert dm.train_set.images.shape == (60, 1, 28, 28) and dm.train_set.images.dtype == torch.uint8
    assert torch.equal(dm.train_set.images[:, 0], torch.from_numpy(train_images))
    assert torch.equal(dm.train_set.labels, torch.from_numpy(train_labels).long())
    assert torch.equal(dm.test_set.images[:, 0], torch.from_numpy(test_images))


def test_fashion_mnist_reads_files_placed_directly_in_data_dir(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), samples_per_class=3, val_fraction=0.2)
    dm.setup("fit")
    assert torch.equal(dm.train_set.labels.bincount(), torch.full((10,), 3))
    assert len(dm.val_set) == 12


def test_fashion_mnist_falls_back_to_the_system_copy(tmp_path: Path, monkeypatch) -> None:
    system = tmp_path / "usr_share"
    write_mnist(system)
    monkeypatch.setattr(FashionMNISTDataModule, "system_dirs", (str(system),))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "empty"))
    dm.setup("test")
    assert len(dm.test_set) == 20


def test_missing_data_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(FashionMNISTDataModule, "system_dirs", ())
    with pytest.raises(FileNotFoundError, match="download: true"):
        FashionMNISTDataModule(data_dir=str(tmp_path)).setup("test")


def test_corrupt_idx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    write_idx(path, np.arange(10))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(path)


def write_cifar(root: Path, fine: bool, archive: bool) -> None:
    """The published CIFAR python layout: pickled dicts of flattened CHW rows, plus a meta file."""
    rng = np.random.default_rng(0)
    folder_name = "cifar-100-python" if fine else "cifar-10-batches-py"
    folder = root / folder_name
    folder.mkdir(parents=True)
    key = "fine_labels" if fine else "labels"
    files = ["train", "test"] if fine else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), key: [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    if fine:
        names = [f"name_{i}" for i in range(100)]
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names}))
    if archive:
        tar_name = "cifar-100-python.tar.gz" if fine else "cifar-10-python.tar.gz"
        with tarfile.open(root / tar_name, "w:gz") as tar:
            tar.add(folder, arcname=folder_name)
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_reads_extracted_folder_or_original_archive(tmp_path: Path, archive: bool) -> None:
    write_cifar(tmp_path, fine=False, archive=archive)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    dm.setup()
    assert dm.train_set.images.shape == (20, 3, 32, 32) and len(dm.test_set) == 4


def test_cifar100_class_names_come_from_the_meta_file(tmp_path: Path) -> None:
    write_cifar(tmp_path, fine=True, archive=False)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    assert dm.num_classes == 100
    dm.setup()
    assert dm.class_names[:2] == ["name_0", "name_1"] and dm.num_classes == 100


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 30)) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            mode_image = Image.fromarray(pixels).convert("L") if i % 2 else Image.fromarray(pixels)
            mode_image.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_decodes_once_to_fixed_size_rgb(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"cat": 4, "dog": 6})
    write_folder(tmp_path / "test", {"cat": 2, "dog": 2}, size=(50, 40))
    dm = ImageFolderDataModule(
        train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"), image_size=16, val_fraction=0.2
    )
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    dm.setup()
    assert dm.train_set.images.shape == (8, 3, 16, 16) and dm.train_set.images.dtype == torch.uint8
    assert len(dm.val_set) == 2 and dm.test_set.images.shape == (4, 3, 16, 16)
    assert torch.equal(dm.test_set.labels, torch.tensor([0, 0, 1, 1]))


def test_image_folder_separate_val_and_few_shot(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"a": 5, "b": 5, "c": 5})
    write_folder(tmp_path / "val", {"a": 1, "c": 2})
    dm = ImageFolderDataModule(
        train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"), image_size=8, samples_per_class=2
    )
    dm.setup()
    assert torch.equal(dm.train_set.labels.bincount(), torch.tensor([2, 2, 2]))
    assert torch.equal(dm.val_set.labels, torch.tensor([0, 2, 2]))
    assert torch.equal(dm.test_set.labels, dm.val_set.labels), "without test_dir, testing uses val_dir"


def test_image_folder_errors_name_the_problem(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", {"a": 2, "b": 2})
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="empty holds no images"):
        ImageFolderDataModule(train_dir=str(tmp_path / "train"), image_size=8).setup("fit")
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        ImageFolderDataModule(train_dir=str(tmp_path / "train"), image_size=8).setup("fit")
    (tmp_path / "train" / "a" / "broken.jpg").unlink()
    with pytest.raises(ValueError, match="different sizes"):
        write_folder(tmp_path / "train", {"b": 1}, size=(9, 9))
        ImageFolderDataModule(train_dir=str(tmp_path / "train"), image_size=None).setup("fit")
    with pytest.raises(ValueError, match="no test images"):
        ImageFolderDataModule(train_dir=str(tmp_path / "train"), image_size=8).setup("test")
    with pytest.raises(FileNotFoundError):
        ImageFolderDataModule(train_dir=str(tmp_path / "nowhere"))
