"""Batched image transforms that run after the batch reaches its device.

Per-sample torchvision transforms in DataLoader workers dominate the epoch time of small
networks (see ../shared/OFFLINE.md); here one tensor operation transforms the whole batch.
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


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and take an independent random crop of the original size per sample."""
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample horizontally with probability 0.5."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def augment_batch(
    images: torch.Tensor, crop_padding: int = 0, hflip: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The standard small-image training augmentation (pad-and-crop, horizontal flip), batched."""
    images = random_crop(images, crop_padding, generator)
    return random_hflip(images, generator) if hflip else images
