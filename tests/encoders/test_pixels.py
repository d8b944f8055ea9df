"""The weight-free ``pixels:P`` encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from token_reduction.encoders import load_encoder
from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD
from token_reduction.encoders.pixels import parse_pixels_spec, tokens_to_image


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("pixels:16", (16, (224, 224))), ("pixels:8@32", (8, (32, 32))), ("pixels:4@8x12", (4, (8, 12)))],
)
def test_spec_syntax(spec: str, expected: tuple) -> None:
    assert parse_pixels_spec(spec) == expected


@pytest.mark.parametrize("spec", ["pixels:", "pixels:16@", "pixels:16@100", "pixels:0", "pixels:a", "pixels:8@32x"])
def test_bad_specs_show_the_syntax(spec: str) -> None:
    with pytest.raises(ValueError, match="pixels"):
        parse_pixels_spec(spec)


def test_geometry_and_dims() -> None:
    encoder = load_encoder("pixels:4@8x12")
    assert (encoder.family, encoder.layer, encoder.patch_size) == ("pixels", None, 4)
    assert encoder.image_size == (8, 12) and encoder.grid == (2, 3)
    assert (encoder.num_tokens, encoder.dim) == (6, 48)
    assert encoder.preprocess([_image(30, 17)]).shape == (1, 3, 8, 12)


def test_tokens_reshape_back_to_the_normalised_image() -> None:
    encoder = load_encoder("pixels:8@32")
    images = [_image(32, 32, seed=s) for s in range(2)]
    pixels = encoder.preprocess(images)
    expected = (torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2) / 255.0
                - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-5)  # no resize needed at 32x32
    tokens = encoder.encode(pixels)["features"]
    assert tokens.shape == (2, 16, 192)
    torch.testing.assert_close(tokens_to_image(tokens, encoder.grid, 8), pixels)
    # token (row 1, col 2) is that 8x8 patch, flattened channel-first
    torch.testing.assert_close(tokens[:, 1 * 4 + 2], pixels[:, :, 8:16, 16:24].reshape(2, -1))


def test_resizes_any_image_to_the_fixed_size() -> None:
    encoder = load_encoder("pixels:8@32")
    red = Image.new("RGB", (50, 20), (255, 0, 0))
    tokens = encoder.encode(encoder.preprocess([red]))["features"].view(1, 16, 3, 64)
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(tokens.mean(dim=(0, 1, 3)), expected, rtol=0, atol=1e-4)


def test_no_layers_and_no_attention() -> None:
    with pytest.raises(ValueError, match="no layers"):
        load_encoder("pixels:8@32", layer=-2)
    with pytest.raises(ValueError, match="no attention"):
        load_encoder("pixels:8@32", attention=True)


def test_rejects_pixels_of_another_size() -> None:
    encoder = load_encoder("pixels:8@32")
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        encoder.encode(torch.zeros(1, 3, 16, 16))
