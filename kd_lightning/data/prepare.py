"""Convert an image data set, once, into LitData chunks that :class:`StreamingImageDataModule` streams.

Each sample is stored as ``{"image": encoded bytes, "label": int, "index": int}``: a plain JPEG
from an image folder keeps its original bytes (decoded later in the loader workers); every other
file, and data sets published as arrays (MNIST, CIFAR, digits), are stored as lossless PNGs of
their RGB pixels (see :func:`keeps_its_bytes`). Every file is checked before a chunk is written,
so a damaged or animated one is refused with its name.
Next to LitData's ``index.json`` each split gets ``kd_lightning.json`` with the class names, the
channel count and every sample's label, so the DataModule splits and subsets without reading
the images.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from rich.progress import track
from torchvision.io import encode_png

from kd_lightning.data._litdata import BinaryWriter
from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.image_folder import IMAGE_SUFFIXES, list_class_folders, list_images, read_rgb
from kd_lightning.data.output_folder import (
    check_free_space,
    check_name_length,
    check_not_overlapping,
    check_replaceable,
    staged_output,
)
from kd_lightning.data.torchvision_sets import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
)
from kd_lightning.data.worker_pool import ordered_map
from kd_lightning.errors import ConfigError, DataError, InvalidDataError

METADATA_FILE = "kd_lightning.json"
# ``--chunk_bytes`` units, decimal as LitData counts them.
BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
}
SPLITS = ("train", "val", "test")
EXIF_ORIENTATION = 0x0112


# The in-memory DataModules whose splits ``prepare`` can convert, by CLI name.
ARRAY_SETS: dict[str, Callable[..., Any]] = {
    "digits": DigitsDataModule,
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
}


def keeps_its_bytes(source: Path | io.BytesIO) -> bool:
    """Whether an image file is stored as it is: an 8-bit RGB or grayscale JPEG without a rotation.

    torchvision decodes such a file in the loader workers exactly as :func:`read_rgb` does; it
    ignores EXIF orientation, drops an alpha channel instead of compositing it over white,
    returns 16-bit PNGs as ``uint16`` and animated images as a stack of frames, and cannot read
    BMP or TIFF, so every other file is stored as the PNG of its pixels. Read from the header alone.
    """
    try:
        with Image.open(source) as opened:
            return (
                opened.format == "JPEG"
                and opened.mode in ("RGB", "L")
                and opened.getexif().get(EXIF_ORIENTATION, 1) == 1
            )
    except Exception:  # PIL raises several types for foreign files; read_rgb names the file
        return False


def stored_image_bytes(path: Path) -> bytes:
    """The bytes to store for one image file, so that the loader workers decode what :func:`read_rgb` reads:
    a plain JPEG's own bytes (the bulk of any photo collection), else the PNG of its RGB pixels."""
    data = path.read_bytes()
    return data if keeps_its_bytes(io.BytesIO(data)) else encode_png(read_rgb(path)).numpy().tobytes()


def check_image(path: str) -> None:
    """Decode a file that will not keep its bytes, so that a damaged or animated one is refused with its name."""
    if not keeps_its_bytes(Path(path)):
        read_rgb(Path(path))


def check_images(paths: list[str], num_workers: int) -> None:
    """Check every file (:func:`check_image`) before any chunk is written, so that a damaged one
    is refused with its name and a crash in a decoder names the files it was reading."""
    for _ in ordered_map(check_image, paths, num_workers):
        pass


def _file_item(sample: tuple[int, str, int]) -> dict[str, Any]:
    index, path, label = sample
    return {"image": stored_image_bytes(Path(path)), "label": label, "index": index}


def _array_item(sample: tuple[int, torch.Tensor, int]) -> dict[str, Any]:
    index, image, label = sample
    return {"image": encode_png(image).numpy().tobytes(), "label": label, "index": index}


def prepare_dataset(
    source: str,
    output_dir: str,
    split: Literal["train", "val", "test"] = "train",
    data_dir: str = "data",
    chunk_bytes: str = "64MB",
    num_workers: int = 1,
    overwrite: bool = False,
    verbose: bool = True,
) -> Path:
    """Convert one split of a data set into LitData chunks under ``OUTPUT_DIR/SPLIT`` (once, with a progress bar).

    Train with the result through ``StreamingImageDataModule(data_dir=OUTPUT_DIR)``: it reads
    ``train/`` and, when present, ``val/`` (a separate validation split) and ``test/``.

    Args:
        source: a folder of class sub-folders (``root/<class>/<image>``; plain JPEGs keep their
            bytes and are decoded in the loader workers, other files are stored as PNGs of their
            RGB pixels), or one of ``digits``, ``mnist``,
            ``fashion_mnist``, ``cifar10``, ``cifar100`` (read from ``data_dir`` as the in-memory
            modules read them; stored as lossless PNGs).
        output_dir: where to write the split's folder (a local path; copy it to object storage afterwards).
        split: which split to write; for the named data sets also which split to read
            (``val`` is not published for them: hold it out at training time with ``val_fraction``).
        data_dir: where the named data sets live.
        chunk_bytes: target size of one chunk file (LitData's unit of download and shuffling).
        num_workers: processes that read and encode the images in parallel (the command itself writes the chunks).
        overwrite: replace an existing ``OUTPUT_DIR/SPLIT`` written by ``prepare`` instead of refusing
            (only once the new one is complete; a folder ``prepare`` did not write is never replaced).
        verbose: show LitData's progress bar.

    Returns:
        The written folder ``OUTPUT_DIR/SPLIT``.
    """
    out = Path(output_dir) / split
    size = parse_chunk_bytes(chunk_bytes)
    reads = Path(data_dir) if source in ARRAY_SETS else Path(source)
    check_not_overlapping(out, reads, contains_only=source in ARRAY_SETS)
    check_name_length(out)
    check_replaceable(out, overwrite)
    inputs, item_fn, class_names, channels = _collect(source, split, data_dir)
    if not inputs:
        raise InvalidDataError(f"{source} has no images for split {split!r}")
    check_free_space(out, _stored_size(inputs))
    if item_fn is _file_item:
        check_images([path for _, path, _ in inputs], num_workers)
    with staged_output(out) as staging:
        _write_chunks(item_fn, inputs, staging, size, num_workers, verbose)
        labels = [label for _, _, label in inputs]
        _check_count(staging, len(labels))
        metadata = {"source": str(source), "class_names": class_names, "channels": channels, "labels": labels}
        (staging / METADATA_FILE).write_text(json.dumps(metadata))
    return out


def parse_chunk_bytes(chunk_bytes: str) -> int:
    """``64MB``, ``512KB``, ``1GB`` or a plain byte count, as bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", chunk_bytes)
    unit = BYTE_UNITS.get(match.group(2).lower()) if match else None
    size = int(float(match.group(1)) * unit) if match and unit else 0
    if size <= 0:
        raise ConfigError(f"--chunk_bytes {chunk_bytes!r} is not a size: write one like 64MB, 512KB or 1GB")
    return size


def _stored_size(inputs: list[tuple[int, Any, int]]) -> int:
    """Bytes the chunks will take, about: the files' own sizes, or the raw pixels of array images (an upper bound)."""
    return sum(Path(item).stat().st_size if isinstance(item, str) else item.numel() for _, item, _ in inputs)


def _collect(source: str, split: str, data_dir: str) -> tuple[list[tuple[int, Any, int]], Callable, list[str], int]:
    """The samples ``(index, file path or image tensor, label)``, how to store one, class names and channels."""
    named = ARRAY_SETS
    if source in named:
        if split == "val":
            raise ConfigError(f"{source} publishes no validation split; prepare train and test, hold val out at fit")
        module = named[source](data_dir=data_dir)
        dataset = module.load_split(split)
        images, labels = dataset.images, dataset.labels.tolist()
        samples = [(i, images[i], label) for i, label in enumerate(labels)]
        return samples, _array_item, list(module.class_names), int(images.shape[1])
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{source} is neither a folder nor one of {sorted(named)}")
    class_names = list_class_folders(root)
    samples = []
    for label, name in enumerate(class_names):
        files = list_images(root / name)
        if not files:
            raise InvalidDataError(f"class folder {root / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        samples += [(len(samples) + i, str(path), label) for i, path in enumerate(files)]
    return samples, _file_item, class_names, 3


def _write_chunks(
    item_fn: Callable[[Any], dict[str, Any]],
    inputs: list[tuple[int, Any, int]],
    folder: Path,
    chunk_bytes: int,
    num_workers: int,
    verbose: bool,
) -> None:
    """Write ``item_fn(sample)`` for every sample, in input order, as LitData chunks and ``index.json``.

    Workers only encode (:func:`ordered_map`); this process writes every chunk with LitData's own
    writer, so a full disk is an ``OSError`` raised here and a dead worker is one error, where
    ``litdata.optimize`` leaves its parent waiting forever for a worker that failed after its
    last progress report. A sample's position in the data set is its ``index``.
    """
    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    items = ordered_map(item_fn, inputs, num_workers, describe=_describe)
    with closing(items):
        for position, item in enumerate(track(items, "writing chunks", total=len(inputs), disable=not verbose)):
            writer.add_item(position, item)
    writer.done()
    # merge() waits for one index per process of the job it detects (``WORLD_SIZE``, which torchrun
    # and Lightning export): forever, since this writer is the only one.
    writer._merge_no_wait()


def _describe(sample: tuple[int, Any, int]) -> str:
    index, item, _ = sample
    return item if isinstance(item, str) else f"sample {index}"


def _check_count(out: Path, num_samples: int) -> None:
    """Read the written index back: every sample must be in it. (Not through ``StreamingDataset``,
    whose length is one process's share in a job that exports ``WORLD_SIZE``.)"""
    stored = sum(chunk["chunk_size"] for chunk in json.loads((out / "index.json").read_bytes())["chunks"])
    if stored != num_samples:
        raise InvalidDataError(f"{out} holds {stored} samples, {num_samples} were written")


def read_metadata(split_dir: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``kd_lightning.json`` that ``prepare`` wrote next to a split's chunks (local or object storage)."""
    path = Path(split_dir) / METADATA_FILE
    if "://" in split_dir:
        from litdata.streaming.fs_provider import _get_fs_provider

        local = Path.home() / ".cache" / "kd_lightning" / split_dir.split("://", 1)[1].replace("/", "_")
        local.mkdir(parents=True, exist_ok=True)
        path = local / METADATA_FILE
        remote = f"{split_dir.rstrip('/')}/{METADATA_FILE}"
        _get_fs_provider(split_dir, storage_options).download_file(remote, str(path))
    if not path.is_file():
        raise DataError(f"{path} not found: prepare the data set first (kd-lightning prepare SOURCE OUTPUT_DIR)")
    try:
        metadata = json.loads(path.read_bytes())
        if not isinstance(metadata, dict) or not {"class_names", "channels", "labels"} <= metadata.keys():
            raise ValueError("class_names, channels or labels missing")
    except ValueError as err:
        raise InvalidDataError(
            f"{path} is damaged or cut short ({err}); prepare the split again "
            "(kd-lightning prepare ... --overwrite true)"
        ) from err
    return metadata
