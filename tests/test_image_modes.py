"""Every image mode PIL opens becomes the right RGB pixels, or is refused with the file's name."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_lightning.data.image_folder import decode_images, read_rgb
from kd_lightning.errors import InvalidDataError


def _rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 as kd_lightning reads it."""
    return read_rgb(path).permute(1, 2, 0).numpy()


def _png16(path: Path, samples: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB): ``color_type`` 0 gray, 2 RGB."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\0" + rows[i * stride : (i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    pixels = _rgb(_png16(tmp_path / "gray16.png", values, color_type=0))
    assert pixels[..., 0].tolist() == [[0, 1, 128, 255]]
    assert (pixels == pixels[..., :1]).all()  # gray in all three channels


def test_16_bit_grayscale_resized_is_not_all_white(tmp_path):
    values = np.full((16, 16), 32896, dtype=np.uint16)  # mid-gray
    images = decode_images([_png16(tmp_path / "gray16.png", values, color_type=0)], image_size=8)
    assert images.shape == (1, 3, 8, 8) and images.dtype == torch.uint8
    assert (images == 128).all()


def test_16_bit_rgb_keeps_its_colours(tmp_path):
    values = np.zeros((2, 2, 3), dtype=np.uint16)
    values[..., 0], values[..., 2] = 65535, 32896
    pixels = _rgb(_png16(tmp_path / "rgb16.png", values, color_type=2))
    assert pixels[0, 0].tolist() == [255, 0, 128]


def test_palette_image_gives_its_palette_colours(tmp_path):
    image = Image.new("P", (2, 2))
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "palette.png")
    pixels = _rgb(tmp_path / "palette.png")
    assert pixels[0, 1].tolist() == [10, 200, 30] and pixels[0, 0].tolist() == [0, 0, 0]


def test_palette_transparency_is_composited_over_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "palette_t.png", transparency=0)
    assert _rgb(tmp_path / "palette_t.png")[0].tolist() == [[255, 255, 255], [10, 200, 30]]


def test_one_bit_image(tmp_path):
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "bits.png")
    assert _rgb(tmp_path / "bits.png")[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_cmyk_is_converted(tmp_path):
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")  # pure red in CMYK
    assert _rgb(tmp_path / "cmyk.tif")[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_white(tmp_path, mode):
    colour = (200, 0, 0, 0) if mode == "RGBA" else (60, 0)  # fully transparent
    opaque = (10, 20, 30, 255) if mode == "RGBA" else (60, 255)
    image = Image.new(mode, (2, 1), colour)
    image.putpixel((1, 0), opaque)
    image.save(tmp_path / f"{mode}.png")
    pixels = _rgb(tmp_path / f"{mode}.png")
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == ([10, 20, 30] if mode == "RGBA" else [60, 60, 60])


def test_half_transparent_pixel_is_blended(tmp_path):
    Image.new("RGBA", (1, 1), (0, 0, 0, 128)).save(tmp_path / "half.png")
    assert _rgb(tmp_path / "half.png")[0, 0].tolist() == [127, 127, 127]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (3, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))  # top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image.save(tmp_path / "rotated.png", exif=exif)
    pixels = _rgb(tmp_path / "rotated.png")
    assert pixels.shape == (3, 2, 3)  # displayed upright: 2 wide, 3 high
    assert pixels[0, 1].tolist() == [255, 0, 0] and pixels[0, 0].tolist() == [0, 0, 0]  # now top-right


def test_ycbcr_jpeg_and_grayscale(tmp_path):
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "blue.jpg", quality=100)
    assert np.abs(_rgb(tmp_path / "blue.jpg")[0, 0].astype(int) - [0, 0, 255]).max() <= 3
    Image.new("L", (2, 2), 77).save(tmp_path / "gray.png")
    assert _rgb(tmp_path / "gray.png")[0, 0].tolist() == [77, 77, 77]


def test_animated_gif_is_refused_with_its_name(tmp_path):
    frames = [Image.new("L", (4, 4), value) for value in (10, 120, 240)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidDataError, match=r"moving\.gif is an animated image with 3 frames"):
        read_rgb(tmp_path / "moving.gif")


def test_single_frame_gif_is_read(tmp_path):
    Image.new("L", (4, 4), 99).save(tmp_path / "still.gif")
    assert _rgb(tmp_path / "still.gif")[0, 0].tolist() == [99, 99, 99]


@pytest.mark.parametrize(
    ("mode", "array", "expected"),
    [("F", np.ones((2, 2), np.float32), "floating-point"), ("I", np.ones((2, 2), np.int32), "32-bit integer")],
)
def test_images_without_a_0_255_range_are_refused(tmp_path, mode, array, expected):
    Image.fromarray(array, mode=mode).save(tmp_path / "odd.tif")
    with pytest.raises(InvalidDataError, match=rf"odd\.tif is a {expected} image"):
        read_rgb(tmp_path / "odd.tif")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n truncated", b"plain text"])
def test_undecodable_files_are_refused_with_their_name(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(InvalidDataError, match=r"cannot decode image .*bad\.png"):
        read_rgb(tmp_path / "bad.png")
