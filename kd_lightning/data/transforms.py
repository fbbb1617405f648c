"""Batched image transforms that run after the batch reaches its device.

Per-sample torchvision transforms in DataLoader workers dominate the epoch time of small
networks; here one tensor operation transforms the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float_images(images: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """``uint8`` ``[B, C, H, W]`` in 0-255 → float in [0, 1], resized to ``image_size`` if given."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x


def sample_crop_offsets(
    batch: int, padding: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(dy, dx)`` offsets in ``[0, 2·padding]`` for each of ``batch`` samples."""
    dy = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    return dy, dx


def crop_at(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop each sample at its own offset ``(dy, dx)`` to the original size.

    Separate from the random sampling so that a recorded view (a teacher-output cache entry)
    can be rendered again exactly.
    """
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Flip horizontally the samples whose ``flip`` entry is true."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and take an independent random crop of the original size per sample."""
    if padding <= 0:
        return images
    dy, dx = sample_crop_offsets(images.shape[0], padding, images.device, generator)
    return crop_at(images, padding, dy, dx)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample horizontally with probability 0.5."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return flip_where(images, flip)


def augment_batch(
    images: torch.Tensor, crop_padding: int = 0, hflip: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The standard small-image training augmentation (pad-and-crop, horizontal flip), batched."""
    images = random_crop(images, crop_padding, generator)
    return random_hflip(images, generator) if hflip else images
