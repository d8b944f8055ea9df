"""Colour augmentation applied to cached ``pixels:P`` features, so no colour can stand for content.

A ``pixels:P`` token is its normalised patch, so any per-image colour map ``p' = M p + b``
(channel swaps, negatives, grey, a tint) is an affine map of the cached features: it costs one
small matrix product per batch, needs no re-extraction, and turns each white page into a dark,
coloured or inverted one. Every map used here is a convex mix of a permuted / inverted / grey image
and a constant colour, so pixel values stay in ``[0, 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from token_reduction.encoders.base import CLIP_MEAN, CLIP_STD

PERMUTATIONS = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


def random_colour_maps(batch: int, generator: torch.Generator | None = None, grey_probability: float = 0.15) -> tuple[Tensor, Tensor]:
    """``(B, 3, 3)`` matrices and ``(B, 3)`` offsets of random colour maps on ``[0, 1]`` pixels."""
    perm = PERMUTATIONS[torch.randint(len(PERMUTATIONS), (batch,), generator=generator)]
    matrix = torch.zeros(batch, 3, 3)
    matrix.scatter_(2, perm[..., None], 1.0)
    grey = torch.rand(batch, generator=generator) < grey_probability
    matrix[grey] = torch.full((3, 3), 1.0 / 3.0)
    offset = torch.zeros(batch, 3)
    invert = torch.rand(batch, generator=generator) < 0.5
    matrix[invert] = -matrix[invert]
    offset[invert] = 1.0
    strength = 0.55 + 0.45 * torch.rand(batch, 1, generator=generator)  # share kept of the image, rest is a tint
    tint = torch.rand(batch, 3, generator=generator)
    return matrix * strength[..., None], offset * strength + tint * (1.0 - strength)


def apply_colour_maps(features: Tensor, matrix: Tensor, offset: Tensor) -> Tensor:
    """Map normalised ``pixels:P`` tokens ``(B, N, 3*P*P)`` through per-image colour maps."""
    batch, tokens, dim = features.shape
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=features.device)[:, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=features.device)[:, None]
    pixels = features.float().reshape(batch, tokens, 3, dim // 3) * std + mean
    mapped = torch.einsum("bck,bnkp->bncp", matrix.to(features.device), pixels) + offset.to(features.device)[:, None, :, None]
    return ((mapped - mean) / std).reshape(batch, tokens, dim).to(features.dtype)


def colour_jitter(features: Tensor, probability: float, generator: torch.Generator | None = None) -> Tensor:
    """Recolour each image of the batch with ``probability``; the others pass through unchanged."""
    if probability <= 0:
        return features
    if features.shape[-1] % 3:
        raise ValueError(f"colour jitter needs pixels:P tokens (dim 3*P*P), got dim {features.shape[-1]}")
    batch = features.shape[0]
    matrix, offset = random_colour_maps(batch, generator)
    skip = torch.rand(batch, generator=generator) >= probability
    matrix[skip] = torch.eye(3)
    offset[skip] = 0.0
    return apply_colour_maps(features, matrix, offset)
