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


def weak_augment(
    images: torch.Tensor, translate: float = 0.125, generator: torch.Generator | None = None
) -> torch.Tensor:
    """FixMatch's weak view (Sohn et al., 2020): a random horizontal flip and a translation by up to
    ``translate`` of the side in each direction (zero padding, then a random crop of the original size)."""
    padding = int(translate * images.shape[-1] + 0.5)
    return augment_batch(images, padding, hflip=True, generator=generator)


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, generator=generator)


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: ``other + factor · (images − other)``, clipped to [0, 1]."""
    return (other + _per_sample(factor) * (images - other)).clamp(0.0, 1.0)


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each image so its darkest pixel is 0 and its brightest 1 (flat images stay as they are)."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (images - low) / span.clamp(min=1e-8), images)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image over 256 grey levels: each pixel becomes its level's share of
    the image's pixels at or below that level."""
    b = images.shape[0]
    levels = (images.clamp(0.0, 1.0) * 255).round().long().reshape(b, -1)
    counts = torch.zeros(b, 256, device=images.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float)
    )
    cdf = counts.cumsum(1) / levels.shape[1]
    return cdf.gather(1, levels).reshape(images.shape)


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of each 8-bit pixel (per sample)."""
    step = _per_sample(2.0 ** (8 - bits.float()))
    return torch.floor((images * 255).round() / step) * step / 255


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (per sample)."""
    return torch.where(images >= _per_sample(threshold), 1.0 - images, images)


def sharpen(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Sharpness: blend with the image smoothed by PIL's 3×3 kernel (borders kept)."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=images.device) / 13
    c = images.shape[1]
    smooth = F.conv2d(images, kernel.expand(c, 1, 3, 3), padding=1, groups=c)
    smooth[..., 0, :], smooth[..., -1, :] = images[..., 0, :], images[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = images[..., :, 0], images[..., :, -1]
    return _blend(images, smooth, factor)


def affine(images: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Resample each image through its own ``[2, 3]`` affine ``matrix`` (normalised coordinates, zero fill)."""
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _signed(magnitude: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    sign = torch.rand(magnitude.shape, device=magnitude.device, generator=generator) < 0.5
    return torch.where(sign, -magnitude, magnitude)


def _geometric(kind: str, m: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The affine matrices of one geometric RandAugment op at magnitudes ``m`` in [0, 1]."""
    eye = torch.eye(2, 3, device=m.device).repeat(len(m), 1, 1)
    if kind == "rotate":  # up to 30 degrees either way
        angle = _signed(m * torch.pi / 6, generator)
        eye[:, 0, 0], eye[:, 0, 1] = angle.cos(), -angle.sin()
        eye[:, 1, 0], eye[:, 1, 1] = angle.sin(), angle.cos()
    elif kind == "shear_x":  # shear factor up to 0.3
        eye[:, 0, 1] = _signed(0.3 * m, generator)
    elif kind == "shear_y":
        eye[:, 1, 0] = _signed(0.3 * m, generator)
    elif kind == "translate_x":  # up to 30 % of the side (normalised coordinates span 2)
        eye[:, 0, 2] = _signed(0.6 * m, generator)
    else:
        eye[:, 1, 2] = _signed(0.6 * m, generator)
    return eye


RAND_AUGMENT_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "brightness",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "rotate",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


def _apply_op(name: str, x: torch.Tensor, m: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One RandAugment op on images ``x`` at per-sample magnitudes ``m`` in [0, 1]; enhance factors span
    [0.05, 0.95] around 1 either way, as in FixMatch's RandAugment variant."""
    if name == "identity":
        return x
    if name == "autocontrast":
        return autocontrast(x)
    if name == "equalize":
        return equalize(x)
    factor = 1.0 + _signed(0.05 + 0.9 * m, generator)
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if name == "contrast":
        return _blend(x, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)
    if name == "sharpness":
        return sharpen(x, factor)
    if name == "posterize":
        return posterize(x, (8 - (m * 4).floor()).clamp(4, 8))
    if name == "solarize":
        return solarize(x, 1.0 - m)
    return affine(x, _geometric(name, m, generator))


def rand_augment(images: torch.Tensor, num_ops: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandAugment with a random magnitude per sample and op (FixMatch's strong view without Cutout):
    ``num_ops`` ops drawn uniformly from :data:`RAND_AUGMENT_OPS` for each image, batched."""
    b = images.shape[0]
    for _ in range(num_ops):
        chosen = torch.randint(len(RAND_AUGMENT_OPS), (b,), device=images.device, generator=generator)
        magnitude = torch.rand(b, device=images.device, generator=generator)
        out = images.clone()
        for index, name in enumerate(RAND_AUGMENT_OPS):
            selected = (chosen == index).nonzero().flatten()
            if len(selected):
                out[selected] = _apply_op(name, images[selected], magnitude[selected], generator)
        images = out
    return images


def cutout(
    images: torch.Tensor, max_fraction: float = 0.5, fill: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill one square per image with ``fill``: side uniform in [1, ``max_fraction`` · side] pixels,
    centre anywhere in the image (the square may be cut by the border)."""
    b, _, h, w = images.shape
    longest = max(1, int(max_fraction * min(h, w)))
    size = torch.randint(1, longest + 1, (b,), device=images.device, generator=generator)
    cy = torch.randint(0, h, (b,), device=images.device, generator=generator)
    cx = torch.randint(0, w, (b,), device=images.device, generator=generator)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=images.device)[None, :]
    cols = torch.arange(w, device=images.device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + size)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + size)[:, None])
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
    return torch.where(mask, torch.full_like(images, fill), images)


def strong_augment(images: torch.Tensor, num_ops: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """FixMatch's strong view: the weak view's flip and translation, RandAugment, then Cutout."""
    return cutout(rand_augment(weak_augment(images, generator=generator), num_ops, generator), generator=generator)
