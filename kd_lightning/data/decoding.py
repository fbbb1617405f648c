"""Decode stored image bytes in a loader worker into one fixed size, so a batch stacks into one tensor.

Decoding is torchvision's (``decode_image``: libjpeg-turbo for JPEG, libpng for the PNGs that
``prepare`` writes for data sets published as arrays). Other libjpeg-turbo bindings (simplejpeg,
PyTurboJPEG) are not faster by enough to earn an extra dependency (benchmarks/RESULTS.md).

Resizing stays ``uint8`` (torchvision's antialiased bilinear kernel has a ``uint8`` path), so a
worker never holds float copies of full-size images.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from kd_lightning.data.integrity import check_encoded_image
from kd_lightning.errors import InvalidDataError

# ImageNet evaluation convention: resize the shorter side to size / 0.875 (256 for 224), centre-crop.
EVAL_CROP_FRACTION = 0.875


def decode_bytes(data: bytes, channels: int) -> torch.Tensor:
    """Encoded image → ``uint8`` ``[channels, H, W]`` (``channels`` is 1 or 3), its structure checked first
    (:func:`~kd_lightning.data.integrity.check_encoded_image`): damage is an error, not a crash in libpng."""
    try:
        check_encoded_image(data)
        mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode)
    except (RuntimeError, ValueError) as err:
        raise InvalidDataError(f"cannot decode a stored image ({len(data)} bytes): {err}") from err
    if image.dtype != torch.uint8 or image.dim() != 3:
        # A 16-bit PNG or an animated image stored as-is by a prepare from before stored_image_bytes:
        # read on, it would be trained on as 0-65535 values or as a stack of frames.
        raise InvalidDataError(
            f"a stored image decodes to a {image.dtype} tensor of shape {tuple(image.shape)}, not 8-bit "
            "[C, H, W]: prepare the data set again (kd-lightning prepare ... --overwrite true)"
        )
    return image


def inception_crop(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop: 8-100 % of the area, aspect 3/4-4/3.

    The same distribution as torchvision's ``RandomResizedCrop`` defaults, drawn from ``rng`` so
    that a crop depends on ``(seed, epoch, sample)`` only and a resumed run draws the same one.
    """
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    side = min(height, width)  # fallback: the largest centred square
    return (height - side) // 2, (width - side) // 2, side, side


@dataclass(frozen=True)
class ImageDecoder:
    """Turn one stored item into ``(image uint8 [C, S, S], label, sample index)``.

    Args:
        channels: 1 (grayscale) or 3 (RGB), as recorded when the data set was prepared.
        image_size: output side ``S``; ``None`` keeps the stored size (all images must share it).
        random_resized_crop: training view: an Inception-style random crop resized to ``S``
            (else the whole image is resized to ``S × S``, as the in-memory folders do).
        center_crop: evaluation view of an ImageNet recipe: shorter side to ``S / 0.875``,
            centre crop ``S`` (else the whole image is resized to ``S × S``).
        seed: with ``epoch`` and the sample's position, seeds the random crop (a teacher cache passes its
            own seed and a fixed view number in place of the epoch, so each view's crop is fixed).
        positions: sorted positions (in the prepared set) of the samples this split holds; the
            returned index is the sample's position in this array, i.e. its index in the split.
        labels: the split's labels, in the order of ``positions`` (they may differ from the
            stored ones: ``IGNORE_LABEL`` for the unlabeled transfer set).
    """

    channels: int
    image_size: int | None = None
    random_resized_crop: bool = False
    center_crop: bool = False
    seed: int = 0
    positions: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __call__(self, item: dict, epoch: int) -> tuple[torch.Tensor, int, int]:
        image = decode_bytes(item["image"], self.channels)
        position = int(item["index"])
        index = position if self.positions is None else int(np.searchsorted(self.positions, position))
        label = int(item["label"]) if self.labels is None else int(self.labels[index])
        return self.resize(image, epoch, position), label, index

    def resize(self, image: torch.Tensor, epoch: int, position: int) -> torch.Tensor:
        size = self.image_size
        if size is None:
            return image
        height, width = image.shape[-2:]
        if self.random_resized_crop:
            rng = random.Random(f"{self.seed}/{epoch}/{position}")
            top, left, h, w = inception_crop(height, width, rng)
            return TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        if self.center_crop:
            image = TF.resize(image, [round(size / EVAL_CROP_FRACTION)], antialias=True)
            return TF.center_crop(image, [size, size])
        if (height, width) == (size, size):
            return image
        return TF.resize(image, [size, size], antialias=True)
