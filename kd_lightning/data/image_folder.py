"""Folders of image files (any ``root/<class>/<image>`` tree), decoded once into memory.

Images are decoded once, resized to the fixed ``image_size`` and kept as ``uint8`` tensors, the
same representation as every other kd_lightning data set: epochs then cost no decoding, and
augmentation runs batched on the device. The price is memory (``N × 3 × S × S`` bytes, e.g.
8,000 images at 128×128 take 400 MB), logged when the images are loaded; data sets
that do not fit in memory at the chosen size are not what this module is for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, ImageOps

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.errors import DataError, InvalidDataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def decode_images(paths: Sequence[Path], image_size: int | None) -> torch.Tensor:
    """Decode image files to one ``uint8`` ``[N, 3, S, S]`` tensor (RGB, resized with antialiasing).

    Raises:
        InvalidDataError: a file cannot be decoded or converted (named in the message), or the
            images differ in size and no ``image_size`` was given.
    """
    images = []
    for path in paths:
        image = read_rgb(path)
        if image_size is not None and tuple(image.shape[-2:]) != (image_size, image_size):
            image = F.interpolate(image[None].float(), size=(image_size, image_size), mode="bilinear", antialias=True)
            image = image[0].round().clamp(0, 255).to(torch.uint8)
        images.append(image)
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise InvalidDataError(
            f"images have different sizes {sorted(sizes)[:3]}...; set data.image_size to resize them"
        )
    stacked = torch.stack(images) if images else torch.empty(0, 3, image_size or 1, image_size or 1, dtype=torch.uint8)
    rank_zero_info(f"decoded {len(images)} images to {tuple(stacked.shape)} uint8 ({stacked.numel() / 2**20:.0f} MiB)")
    return stacked


def read_rgb(path: Path) -> torch.Tensor:
    """One image file as ``uint8`` RGB ``[3, H, W]``, whatever mode PIL opens it in.

    Conversions: EXIF orientation applied; 16-bit grayscale scaled to 8 bits (not clipped);
    palette, 1-bit, grayscale, CMYK and YCbCr converted to RGB; transparency (RGBA, LA, PA, a
    palette's transparent colour) composited over white, the background such images are drawn on.
    Refused, with the file named: animated images (which frame?), floating-point and 32-bit
    integer images (no defined 0-255 range), and anything PIL cannot decode.
    """
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                raise InvalidDataError(
                    f"{path} is an animated image with {frames} frames; save the frame to train on as a still image"
                )
            image = ImageOps.exif_transpose(opened)
            image.load()
            return _to_rgb_tensor(image, path)
    except InvalidDataError:
        raise
    except Exception as err:  # PIL raises several types for truncated, foreign and unsupported files
        raise InvalidDataError(f"cannot decode image {path}: {err}. Remove or replace the file.") from err


def _to_rgb_tensor(image: Image.Image, path: Path) -> torch.Tensor:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N") or (mode == "I" and image.format == "PNG"):
        # 16-bit samples (a PNG's 16-bit grayscale opens as "I" in older Pillow versions).
        array = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        gray = torch.from_numpy(np.round(array).clip(0, 255).astype(np.uint8))
        return gray.expand(3, *gray.shape).contiguous()
    if mode in ("I", "F"):
        raise InvalidDataError(
            f"{path} is a {'32-bit integer' if mode == 'I' else 'floating-point'} image (PIL mode {mode}) with no "
            "defined 0-255 range; save it as an 8- or 16-bit image"
        )
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode not in ("RGB", "RGBA", "L", "1", "P", "CMYK", "YCbCr"):
        raise InvalidDataError(f"{path} has the PIL mode {image.mode}, which kd_lightning does not convert to RGB")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def list_class_folders(root: Path) -> list[str]:
    """Sorted class sub-folder names of ``root`` (hidden folders ignored).

    Raises:
        InvalidDataError: a class folder is a link back into the tree (``loop -> .``), which would
            become a class holding copies of other classes' images, or its name is not UTF-8
            (it could not be written into a checkpoint, a log or a report).
    """
    if not root.is_dir():
        raise DataError(f"image folder not found: {root.resolve()}")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    for folder in folders:
        _check_class_folder(root, folder)
    classes = [p.name for p in folders]
    if len(classes) < 2:
        raise InvalidDataError(f"{root} needs at least two class sub-folders (root/<class>/<image>), found {classes}")
    return classes


def _check_class_folder(root: Path, folder: Path) -> None:
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDataError(
            f"class folder {os.fsencode(folder)!r} has a name that is not UTF-8; rename it "
            "(the name becomes a class name)"
        ) from None
    if folder.is_symlink():
        target, top = folder.resolve(), root.resolve()
        if target == top or target in top.parents or top in target.parents:
            raise InvalidDataError(
                f"class folder {folder} is a link to {target}, inside the image folder or above it: it would "
                "become a class holding copies of other images; remove the link"
            )


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolderDataModule(ImageClassificationDataModule):
    """Any ``train_dir/<class>/<image>`` tree, with optional ``val_dir`` and ``test_dir`` of the same layout.

    Class names are the sub-folder names of ``train_dir``, sorted; the validation and test folders
    may hold a subset of them. Without ``val_dir``, ``val_fraction`` of the training images is held
    out; without ``test_dir``, testing uses ``val_dir`` (and is refused when there is neither).

    Args:
        train_dir: folder of class sub-folders for training (``data_dir`` when omitted).
        val_dir: optional separate validation folder.
        test_dir: optional separate test folder.
        image_size: every image is resized to ``image_size × image_size`` when decoded (needed
            unless all images already share one size).
        **kwargs: see :class:`ImageClassificationDataModule`.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        image_size: int | None = 64,
        **kwargs,
    ) -> None:
        super().__init__(image_size=image_size, **kwargs)
        self.train_dir = Path(train_dir or self.data_dir)
        self.val_dir = Path(val_dir) if val_dir else None
        self.test_dir = Path(test_dir) if test_dir else None
        # Read now, not in setup(): the CLI links num_classes into the model when both are built.
        self.class_names = list_class_folders(self.train_dir)

    def _load_folder(self, root: Path) -> TensorImageDataset:
        paths, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in self.class_names:
                raise InvalidDataError(f"{folder} is a class the training folder {self.train_dir} does not have")
            images = list_images(folder)
            if not images:
                raise InvalidDataError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += images
            labels += [self.class_names.index(folder.name)] * len(images)
        return TensorImageDataset(decode_images(paths, self.image_size), torch.tensor(labels))

    def load_split(self, split: str) -> TensorImageDataset:
        if split == "train":
            return self._load_folder(self.train_dir)
        folder = self.test_dir or self.val_dir
        if folder is None:
            raise InvalidDataError(
                "no test images: set data.test_dir (or data.val_dir) to a folder of class sub-folders"
            )
        return self._load_folder(folder)

    def load_val_split(self) -> TensorImageDataset | None:
        return self._load_folder(self.val_dir) if self.val_dir else None
