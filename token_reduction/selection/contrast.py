"""Local-contrast ranking: keep the tokens that differ from their surroundings.

A training-free content score. Flat regions (sky, walls, blank paper) carry little that the
neighbouring tokens do not already carry, while edges, texture and text do; ranking by local
contrast is the cheapest way to favour the latter without any learned weights.

Two scores, depending on what the tokens are:

* **Pixel tokens** (``pixels:P`` caches, each token a flattened ``(3, P, P)`` patch): the mean
  over the 3 channels of each channel's standard deviation over the ``P x P`` pixels. It is 0 for
  a uniform patch of *any* colour (a white, black or saturated flat patch is as uninformative as a
  grey one) and grows with edges and texture inside the patch.
* **Encoder tokens** (CLIP/SigLIP): a token's features already summarise its patch, so contrast
  is measured between tokens instead: the mean cosine *distance* ``1 - cos`` of the token to its
  (up to) 8 grid neighbours. Tokens of a uniform region score ~0, an odd-one-out scores high.
  Border tokens average over the neighbours that exist; padding neighbours are ignored.

The score is also the importance used by :class:`token_reduction.selection.diversity.DiversitySelection`.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from token_reduction.selection.base import Budget, TokenSelection, selection_from_scores

NEIGHBOUR_OFFSETS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def pixel_contrast(features: Tensor, pixel_patch: int) -> Tensor:
    """``(B, N)`` mean over channels of the per-channel pixel std of each ``(3, P, P)`` patch token."""
    batch, num_tokens, dim = features.shape
    if dim != 3 * pixel_patch * pixel_patch:
        raise ValueError(
            f"pixel contrast expects tokens of 3*P*P = {3 * pixel_patch * pixel_patch} values for pixel_patch={pixel_patch}, "
            f"got dim {dim}; pass the cache's pixels:P patch size, or pixel_patch=None for encoder features"
        )
    patches = features.float().reshape(batch, num_tokens, 3, pixel_patch * pixel_patch)
    return patches.std(dim=-1, correction=0).mean(dim=-1)


def neighbour_distance(features: Tensor, grid: tuple[int, int] | None, padding_mask: Tensor | None = None) -> Tensor:
    """``(B, N)`` mean cosine distance of each token to its existing, non-padding 8-neighbours on ``grid``.

    Vectorised as 8 shifted copies of the grid (no loop over tokens). A token without any valid
    neighbour (a 1x1 grid, or one surrounded by padding) scores 0. Zero vectors have cosine 0 with
    everything, i.e. distance 1.
    """
    batch, num_tokens, dim = features.shape
    if grid is None:
        raise ValueError(
            "contrast on encoder features compares each token with its grid neighbours and needs grid=(rows, cols); "
            "pass the token grid (or pixel_patch=P for pixels:P tokens)"
        )
    rows, cols = int(grid[0]), int(grid[1])
    if rows * cols != num_tokens:
        raise ValueError(f"grid {tuple(grid)} has {rows * cols} cells but the input has {num_tokens} tokens")
    if padding_mask is None:
        valid = torch.ones(batch, rows, cols, device=features.device)
    else:
        valid = (~padding_mask.bool()).to(torch.float32).view(batch, rows, cols)
    unit = F.normalize(features.float(), dim=-1).view(batch, rows, cols, dim) * valid[..., None]
    framed = F.pad(unit, (0, 0, 1, 1, 1, 1))  # one zero token around the grid: borders see fewer neighbours
    framed_valid = F.pad(valid, (1, 1, 1, 1))
    total = torch.zeros(batch, rows, cols, device=features.device)
    count = torch.zeros_like(total)
    for dr, dc in NEIGHBOUR_OFFSETS:
        neighbour = framed[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
        exists = framed_valid[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols]
        total += exists * (1.0 - (unit * neighbour).sum(dim=-1))
        count += exists
    return (total / count.clamp(min=1.0)).view(batch, num_tokens)


def contrast_scores(
    features: Tensor,
    *,
    grid: tuple[int, int] | None = None,
    pixel_patch: int | None = None,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """``(B, N)`` contrast score: pixel contrast when ``pixel_patch`` is given, else neighbour distance."""
    if pixel_patch is not None:
        return pixel_contrast(features, pixel_patch)
    return neighbour_distance(features, grid, padding_mask)


def check_pixel_patch(pixel_patch: int | None) -> int | None:
    """Validate a ``pixel_patch`` constructor argument (``None`` or a positive int)."""
    if pixel_patch is None:
        return None
    if isinstance(pixel_patch, bool) or not isinstance(pixel_patch, int) or pixel_patch < 1:
        raise ValueError(f"pixel_patch must be None or a positive int (the P of pixels:P), got {pixel_patch!r}")
    return pixel_patch


class ContrastSelection:
    """Keep the ``keep`` highest-contrast tokens per image (ties by position), in original order."""

    name = "contrast"
    requires: tuple[str, ...] = ()

    def __init__(self, pixel_patch: int | None = None) -> None:
        self.pixel_patch = check_pixel_patch(pixel_patch)

    def select(
        self,
        features: Tensor,
        keep: Budget | None = None,
        *,
        padding_mask: Tensor | None = None,
        extras: Mapping[str, Tensor] | None = None,
        grid: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> TokenSelection:
        if keep is None:
            raise ValueError("contrast selection has no adaptive mode: pass a budget (count or fraction)")
        scores = contrast_scores(features, grid=grid, pixel_patch=self.pixel_patch, padding_mask=padding_mask)
        return selection_from_scores(features, scores, keep, padding_mask)
