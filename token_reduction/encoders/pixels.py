"""``pixels:P[@S]``: raw normalised pixel patches as tokens, no weights at all.

A baseline "encoder" that needs no download: it shows whether a selector learns anything beyond
what plain pixels carry, and lets the whole pipeline run offline. Spec syntax:

* ``pixels:16`` - 16x16 patches of the image resized to 224x224 (14x14 = 196 tokens of 768);
* ``pixels:16@448`` - resize to 448x448 first;
* ``pixels:16@224x448`` - resize to height 224, width 448.

The image is stretched to that size (no crop), normalised with CLIP's mean/std, and each token is
its patch flattened in ``(channel, row, col)`` order, i.e. ``token.view(3, P, P)`` is the patch.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD, Encoder, ImageTransform

DEFAULT_SIZE = 224
SPEC = re.compile(r"^pixels:(?P<patch>\d+)(?:@(?P<height>\d+)(?:x(?P<width>\d+))?)?$")


def parse_pixels_spec(spec: str) -> tuple[int, tuple[int, int]]:
    """``(patch_size, (height, width))`` of a ``pixels:`` spec, with an error that shows the syntax."""
    match = SPEC.match(spec.strip())
    if match is None:
        raise ValueError(f"bad pixels encoder spec {spec!r}: expected pixels:P, pixels:P@S or pixels:P@HxW (e.g. pixels:16@224)")
    patch = int(match["patch"])
    height = int(match["height"] or DEFAULT_SIZE)
    width = int(match["width"] or height)
    if patch < 1 or height % patch or width % patch:
        raise ValueError(f"bad pixels encoder spec {spec!r}: image size {height}x{width} must be a positive multiple of the patch size {patch}")
    return patch, (height, width)


def pixel_patch_of(encoder: str) -> int | None:
    """P of a ``pixels:P`` spec, ``None`` for any other encoder (whose tokens are not pixels)."""
    return parse_pixels_spec(encoder)[0] if encoder.strip().startswith("pixels:") else None


class PixelEncoder(Encoder):
    """Patchify normalised pixels; ``dim = 3 * P * P``."""

    def __init__(self, spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        patch, size = parse_pixels_spec(spec)
        transform = ImageTransform(mean=CLIP_MEAN, std=CLIP_STD, resize_to=size)
        height, width = size
        pinpoints = [(height, 2 * width), (2 * height, width), (2 * height, 2 * width), (3 * height, width), (height, 3 * width)]
        super().__init__(spec.strip(), "pixels", transform, patch, 3 * patch * patch, layer=None, default_pinpoints=pinpoints)
        self._device = torch.device(device)
        self._dtype = dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @torch.inference_mode()
    def encode(self, pixels: Tensor) -> dict[str, Tensor]:
        batch, channels, height, width = pixels.shape
        if (height, width) != self.image_size or channels != 3:
            raise ValueError(f"{self.name}: expected pixels of shape (B, 3, {self.image_size[0]}, {self.image_size[1]}), got {tuple(pixels.shape)}")
        p = self.patch_size
        rows, cols = self.grid
        x = pixels.to(self._device, self._dtype).reshape(batch, 3, rows, p, cols, p)
        tokens = x.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, 3 * p * p)
        return {"features": tokens}


def tokens_to_image(tokens: Tensor, grid: tuple[int, int], patch_size: int) -> Tensor:
    """Inverse of :meth:`PixelEncoder.encode`: ``(B, N, 3*P*P)`` back to ``(B, 3, H, W)``."""
    rows, cols = grid
    p = patch_size
    batch = tokens.shape[0]
    x = tokens.reshape(batch, rows, cols, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, 3, rows * p, cols * p)
