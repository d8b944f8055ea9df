"""Colour maps on cached ``pixels:P`` features, and the DataModule that applies them to training batches only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from synthetic import write_synthetic_cache
from token_reduction.cache.augment import apply_colour_maps, colour_jitter, random_colour_maps
from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD
from token_reduction.encoders.pixels import PixelEncoder

PATCH = 2
DIM = 3 * PATCH * PATCH
MEAN = torch.tensor(CLIP_MEAN)[:, None]
STD = torch.tensor(CLIP_STD)[:, None]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """``(B, N, 3, P*P)`` pixels in [0, 1] to normalised ``pixels:P`` tokens ``(B, N, 3*P*P)``."""
    return ((pixels - MEAN) / STD).flatten(-2)


def denormalise(tokens: torch.Tensor) -> torch.Tensor:
    return tokens.reshape(*tokens.shape[:-1], 3, -1) * STD + MEAN


def solid(colour: tuple[float, float, float], batch: int = 1, tokens: int = 4) -> torch.Tensor:
    return normalise(torch.tensor(colour)[:, None].expand(batch, tokens, 3, PATCH * PATCH))


def test_random_maps_keep_pixels_in_range() -> None:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(256, 9, 3, PATCH * PATCH, generator=generator)
    pixels[0], pixels[1] = 0.0, 1.0  # pure black and white images are the extremes
    matrix, offset = random_colour_maps(256, generator)
    assert matrix.shape == (256, 3, 3) and offset.shape == (256, 3)
    mapped = denormalise(apply_colour_maps(normalise(pixels), matrix, offset))
    assert mapped.shape == pixels.shape
    assert mapped.min() >= -1e-5 and mapped.max() <= 1 + 1e-5
    # the maps are varied: inverted and non-inverted, grey and coloured ones all occur
    assert (matrix.sum(dim=(1, 2)) < 0).any() and (matrix.sum(dim=(1, 2)) > 0).any()
    assert ((matrix - matrix[:, :1, :1]).abs().amax(dim=(1, 2)) < 1e-6).any()


def test_identity_map_is_identity() -> None:
    features = normalise(torch.rand(3, 5, 3, PATCH * PATCH))
    same = apply_colour_maps(features, torch.eye(3).expand(3, 3, 3), torch.zeros(3, 3))
    assert torch.allclose(same, features, atol=1e-5)


def test_inverting_map_turns_white_into_black() -> None:
    white, black = solid((1.0, 1.0, 1.0)), solid((0.0, 0.0, 0.0))
    inverted = apply_colour_maps(white, -torch.eye(3)[None], torch.ones(1, 3))
    assert torch.allclose(inverted, black, atol=1e-5)
    assert torch.allclose(apply_colour_maps(black, -torch.eye(3)[None], torch.ones(1, 3)), white, atol=1e-5)


def test_maps_act_on_the_pixel_encoders_channel_layout() -> None:
    """A red/blue swap of encoded red pixels gives encoded blue pixels (tokens are (channel, row, col))."""
    encoder = PixelEncoder(f"pixels:{PATCH}@4")

    def encode(colour: tuple[float, float, float]) -> torch.Tensor:
        image = torch.tensor(colour)[None, :, None, None].expand(1, 3, 4, 4)
        image = image.clone()
        image[..., 0, 0] = 0.5  # not uniform inside a patch, so a wrong layout would show
        return encoder.encode((image - MEAN[None, :, :, None]) / STD[None, :, :, None])["features"]

    swap = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])[None]
    swapped = apply_colour_maps(encode((1.0, 0.2, 0.0)), swap, torch.zeros(1, 3))
    assert torch.allclose(swapped, encode((0.0, 0.2, 1.0)), atol=1e-5)


def test_jitter_with_probability_zero_is_identity() -> None:
    features = normalise(torch.rand(4, 6, 3, PATCH * PATCH))
    assert colour_jitter(features, 0.0) is features
    assert torch.equal(colour_jitter(features, 0.0, torch.Generator().manual_seed(1)), features)


def test_jitter_with_probability_one_changes_every_image_and_keeps_dtype() -> None:
    features = normalise(torch.rand(32, 6, 3, PATCH * PATCH))
    out = colour_jitter(features, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == features.shape and out.dtype == features.dtype
    assert ((out - features).abs().flatten(1).amax(dim=1) > 1e-3).all()
    half = colour_jitter(features.half(), 1.0, torch.Generator().manual_seed(0))
    assert half.dtype == torch.float16 and torch.allclose(half.float(), out, atol=2e-2)


def test_jitter_is_deterministic_under_a_seeded_generator() -> None:
    features = normalise(torch.rand(16, 6, 3, PATCH * PATCH))
    a = colour_jitter(features, 0.5, torch.Generator().manual_seed(3))
    b = colour_jitter(features, 0.5, torch.Generator().manual_seed(3))
    c = colour_jitter(features, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a - features).abs().flatten(1).amax(dim=1) > 1e-3
    assert 0 < changed.sum() < 16  # some images are recoloured, the others pass through unchanged
    assert torch.allclose(a[~changed], features[~changed], atol=1e-5)


def test_jitter_refuses_non_pixel_dims() -> None:
    with pytest.raises(ValueError, match="pixels:P"):
        colour_jitter(torch.randn(2, 4, 16), 0.5)


# ----------------------------------------------------------------------------- DataModule


@pytest.fixture()
def pixels_cache(tmp_path: Path) -> Path:
    return write_synthetic_cache(tmp_path / "pixels", num_images=16, dim=DIM, encoder=f"pixels:{PATCH}")


def test_datamodule_recolours_only_while_training(pixels_cache: Path) -> None:
    data = FeatureCacheDataModule(str(pixels_cache), batch_size=8, colour_augment=1.0)
    batch = next(iter(data.train_dataloader()))
    original = batch["features"].clone()

    assert torch.equal(data.on_after_batch_transfer(dict(batch), 0)["features"], original)  # no trainer attached
    data.trainer = SimpleNamespace(training=False)  # validating, testing, predicting
    assert torch.equal(data.on_after_batch_transfer(dict(batch), 0)["features"], original)
    data.trainer = SimpleNamespace(training=True)
    out = data.on_after_batch_transfer(dict(batch), 0)
    assert out["features"].shape == original.shape and torch.equal(out["index"], batch["index"])
    assert ((out["features"] - original).abs().flatten(1).amax(dim=1) > 1e-3).all()
    assert torch.equal(batch["features"], original)  # the loader's tensor is not modified in place

    plain = FeatureCacheDataModule(str(pixels_cache), batch_size=8)  # colour_augment defaults to off
    plain.trainer = SimpleNamespace(training=True)
    assert torch.equal(plain.on_after_batch_transfer(dict(batch), 0)["features"], original)


def test_colour_augment_needs_a_pixels_cache(synthetic_cache: Path) -> None:
    FeatureCacheDataModule(str(synthetic_cache), colour_augment=0.0)  # off: any cache is fine
    with pytest.raises(ValueError, match=r"data\.colour_augment") as info:
        FeatureCacheDataModule(str(synthetic_cache), colour_augment=0.5)
    assert "synthetic" in str(info.value)  # names what the cache holds


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_colour_augment_out_of_range(pixels_cache: Path, value: float) -> None:
    with pytest.raises(ValueError, match=r"data\.colour_augment must be a probability"):
        FeatureCacheDataModule(str(pixels_cache), colour_augment=value)
