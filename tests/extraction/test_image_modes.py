"""High-bit-depth and float images are rescaled to 8-bit RGB, not clipped white; other modes still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD
from token_reduction.extraction.inputs import load_image
from token_reduction.extraction.run import extract

GRADIENT = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))  # 32x32, columns 0, 8, ..., 248: mean 124


def stored_pixels(images: Path, out: Path) -> torch.Tensor:
    """The 32x32 grey image the ``pixels:32@32`` cache holds, undone to 0..255 (one 3x32x32 token)."""
    extract("pixels:32@32", images, out, dtype="fp32", progress=False)
    token = FeatureCache(out).read(0)["features"][0].view(3, 32, 32)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return (token * std + mean) * 255


@pytest.mark.parametrize("kind", ["png16", "tiff_float", "tiff_float_wide"])
def test_high_bit_depth_images_are_stored_with_the_right_values(tmp_path: Path, kind: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    if kind == "png16":
        Image.fromarray(GRADIENT.astype(np.uint16) * 257).save(images / "scan.png")  # Pillow writes a 16-bit PNG
        assert Image.open(images / "scan.png").mode.startswith("I")
    elif kind == "tiff_float":
        Image.fromarray(GRADIENT.astype(np.float32) / 255).save(images / "scan.tif")  # 0..1 floats
    else:
        Image.fromarray(GRADIENT.astype(np.float32) * 4 - 100).save(images / "scan.tif")  # -100..892: min-max
    assert Image.open(next(images.iterdir())).mode != "RGB"
    pixels = stored_pixels(images, tmp_path / "cache")
    expected = torch.from_numpy(GRADIENT).float().expand(3, 32, 32)
    if kind == "tiff_float_wide":
        expected = expected * 255 / 248  # stretched to 0..255
    assert pixels.mean() < 130 and abs(pixels.mean() - expected.mean()) < 0.5  # not white: convert("RGB") clips to ~255
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1.01)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_modes_divide_by_257(tmp_path: Path, mode: str) -> None:
    values = GRADIENT.astype(np.int64) * 257
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    image = Image.frombytes(mode, (32, 32), values.astype(dtype).tobytes())
    rgb = np.asarray(load_image_from(image, tmp_path))
    assert rgb.shape == (32, 32, 3) and (rgb == GRADIENT[..., None]).all()


def test_wide_int_images_are_min_max_scaled(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[-70000, 0], [70000, 140000]], dtype=np.int32))
    assert image.mode == "I"
    assert np.asarray(load_image_from(image, tmp_path))[..., 0].tolist() == [[0, 85], [170, 255]]


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "PA", "RGBA", "CMYK"])
def test_other_modes_still_load(tmp_path: Path, mode: str) -> None:
    base = Image.new("RGB", (8, 8), (200, 100, 50))
    image = base.convert("P").convert("PA") if mode == "PA" else base.convert(mode)
    rgb = load_image_from(image, tmp_path)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)


def load_image_from(image: Image.Image, folder: Path) -> Image.Image:
    """:func:`load_image` of ``image`` saved losslessly (TIFF keeps every mode used here)."""
    path = folder / f"{image.mode.replace(';', '_')}.tiff"
    image.save(path)
    assert Image.open(path).mode == image.mode
    return load_image(path)
