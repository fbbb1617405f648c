"""A prepared (streamed) image folder gives the same pixels as the in-memory one, whatever the file's mode.

The loader workers decode stored bytes with torchvision, which ignores EXIF orientation, drops
alpha instead of compositing it, returns 16-bit PNGs as ``uint16`` and animated GIFs as a stack
of frames, and cannot read BMP or TIFF; ``prepare`` therefore keeps only the bytes torchvision
decodes exactly as :func:`read_rgb` does and stores every other file as the PNG of its pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_lightning.data.decoding import decode_bytes
from kd_lightning.data.image_folder import read_rgb
from kd_lightning.data.prepare import prepare_dataset, stored_image_bytes
from kd_lightning.errors import InvalidDataError

ORIENTATION = 0x0112


def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90° clockwise to display"
    return exif


def _write(folder: Path, name: str) -> Path:
    """One image file of the kind ``name`` says, with random pixels."""
    rgb = _pixels()
    path = folder / name
    opaque = Image.fromarray(rgb)
    if name == "rgb.jpg":
        opaque.save(path, quality=95)
    elif name == "gray.jpg":
        opaque.convert("L").save(path, quality=95)
    elif name == "rotated.jpg":
        opaque.save(path, quality=95, exif=_rotated_exif())
    elif name == "rotated.png":
        opaque.save(path, exif=_rotated_exif())
    elif name == "cmyk.jpg":
        opaque.convert("CMYK").save(path, quality=95)
    elif name == "gray16.png":
        Image.fromarray(np.random.default_rng(1).integers(0, 65536, (6, 8)).astype(np.uint16)).save(path)
    elif name == "rgba.png":
        alpha = np.random.default_rng(2).integers(0, 256, (6, 8), dtype=np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif name == "la.png":
        Image.fromarray(np.dstack([rgb[..., 0], np.zeros((6, 8), np.uint8)]), "LA").save(path)
    elif name == "transparent_palette.png":
        opaque.convert("P").save(path, transparency=0)
    else:  # rgb.png, rgb.bmp, rgb.tif, rgb.webp: the format from the suffix
        opaque.save(path, **({"lossless": True} if name.endswith(".webp") else {}))
    return path


@pytest.mark.parametrize(
    "name",
    [
        "rgb.jpg",
        "gray.jpg",
        "rotated.jpg",
        "rotated.png",
        "cmyk.jpg",
        "gray16.png",
        "rgba.png",
        "la.png",
        "transparent_palette.png",
        "rgb.png",
        "rgb.bmp",
        "rgb.tif",
        "rgb.webp",
    ],
)
def test_streamed_pixels_are_the_in_memory_pixels(tmp_path, name):
    path = _write(tmp_path, name)
    streamed = decode_bytes(stored_image_bytes(path), channels=3)
    expected = read_rgb(path)
    assert streamed.dtype == torch.uint8
    assert streamed.shape == expected.shape
    assert torch.equal(streamed, expected)


@pytest.mark.parametrize("name", ["rgb.jpg", "gray.jpg"])
def test_plain_jpegs_keep_their_bytes(tmp_path, name):
    path = _write(tmp_path, name)
    assert stored_image_bytes(path) == path.read_bytes()


def test_an_animated_image_is_refused_at_prepare_with_its_name(tmp_path):
    frames = [Image.new("L", (4, 4), value) for value in (10, 120, 240)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidDataError, match=r"moving\.gif is an animated image with 3 frames"):
        stored_image_bytes(tmp_path / "moving.gif")


def test_a_damaged_file_is_refused_at_prepare_with_its_name(tmp_path):
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    with pytest.raises(InvalidDataError, match=r"cannot decode image .*cut\.jpg"):
        stored_image_bytes(tmp_path / "cut.jpg")


@pytest.mark.parametrize("name", ["gray16.png", "moving.gif"])
def test_bytes_stored_by_an_earlier_prepare_are_refused_not_misread(tmp_path, name):
    if name == "moving.gif":
        frames = [Image.new("L", (4, 4), value) for value in (10, 240)]
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    else:
        _write(tmp_path, name)
    with pytest.raises(InvalidDataError, match="prepare the data set again"):
        decode_bytes((tmp_path / name).read_bytes(), channels=3)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_prepare_names_a_damaged_file_before_writing_anything(tmp_path, num_workers):
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_pixels(i)).save(tmp_path / "images" / label / f"{i}.png")
    (tmp_path / "images" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    with pytest.raises(InvalidDataError, match=r"cannot decode image .*b/1\.png"):
        prepare_dataset(str(tmp_path / "images"), str(tmp_path / "out"), num_workers=num_workers, verbose=False)
    assert not (tmp_path / "out" / "train").exists()
