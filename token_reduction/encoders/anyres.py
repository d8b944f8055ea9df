"""AnyRes tiling as LLaVA-NeXT and LLaVA-OneVision do it: one base view plus grid tiles.

The base view is the whole image stretched to the encoder's input size. The tiles come from the
pinpoint (a ``(height, width)`` canvas) that keeps the most of the image's resolution while wasting
the least (as transformers' ``select_best_resolution``); the image is resized into it keeping its aspect
ratio, centred on black padding, and cut into encoder-sized tiles, row by row.

Default pinpoints (in units of the encoder's input size S):

* CLIP / pixels (LLaVA-NeXT): 1x2, 2x1, 2x2, 3x1, 1x3 (S=336: [[336,672],[672,336],[672,672],[1008,336],[336,1008]]);
* SigLIP (LLaVA-OneVision "anyres_max_9"): every HxW with H, W in 1..6 (S=384: 384..2304).

A LLaVA checkpoint used as the encoder brings its own ``image_grid_pinpoints``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from token_reduction.encoders.geometry import Crop, Op, Resize, Size

NEXT_UNITS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
ONEVISION_UNITS = tuple((h, w) for h in range(1, 7) for w in range(1, 7))


@dataclass(frozen=True)
class CropView:
    """One sample cut from an image: ``name`` goes into the sample id, ``ops`` render it."""

    name: str
    crop: str | tuple[int, int]
    ops: tuple[Op, ...]


FULL_VIEW = CropView("full", "full", ())
"""No tiling: the encoder's own preprocessing sees the whole image."""


def default_pinpoints(family: str, tile: Size) -> list[Size]:
    """LLaVA-NeXT's grid for CLIP and pixels, LLaVA-OneVision's for SigLIP, scaled to ``tile``."""
    units = ONEVISION_UNITS if family == "siglip" else NEXT_UNITS
    return [(h * tile[0], w * tile[1]) for h, w in units]


def parse_pinpoints(text: str) -> list[Size]:
    """``"336x672,672x336"`` (height x width) to ``[(336, 672), (672, 336)]``."""
    pinpoints = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().lower()
        if not part:
            continue
        height, sep, width = part.partition("x")
        if not sep or not height.strip().isdigit() or not width.strip().isdigit():
            raise ValueError(f"bad pinpoint {part!r} in {text!r}: expected HEIGHTxWIDTH, e.g. 336x672")
        pinpoints.append((int(height), int(width)))
    if not pinpoints:
        raise ValueError(f"no pinpoints in {text!r}: expected e.g. 336x672,672x336")
    return pinpoints


def check_pinpoints(pinpoints: Sequence[Sequence[int]], tile: Size) -> list[Size]:
    """Every pinpoint must be a whole number of tiles, or tiles would be ragged."""
    checked = []
    for point in pinpoints:
        height, width = (int(v) for v in point)
        if height <= 0 or width <= 0 or height % tile[0] or width % tile[1]:
            raise ValueError(f"pinpoint {height}x{width} is not a positive multiple of the encoder's input size {tile[0]}x{tile[1]}")
        checked.append((height, width))
    if not checked:
        raise ValueError("AnyRes needs at least one pinpoint")
    return checked


def best_resolution(size: Size, pinpoints: Sequence[Size]) -> Size:
    """The pinpoint showing the most image pixels, ties broken by the least padding.

    Same rule and integer rounding as transformers' ``select_best_resolution`` (which LLaVA-NeXT and
    OneVision processors call); kept local because importing transformers in every DataLoader worker
    costs seconds.
    """
    height, width = size
    best, best_key = None, None
    for target_h, target_w in pinpoints:
        scale = min(target_w / width, target_h / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        key = (shown, -(target_w * target_h - shown))
        if best_key is None or key > best_key:
            best, best_key = (target_h, target_w), key
    if best is None:
        raise ValueError("AnyRes needs at least one pinpoint")
    return best


def fit_size(size: Size, target: Size) -> Size:
    """Largest aspect-preserving size inside ``target`` (transformers' ``get_patch_output_size``)."""
    height, width = size
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return (min(math.ceil(height * scale_w), target_h), target_w)
    return (target_h, min(math.ceil(width * scale_h), target_w))


def anyres_views(size: Size, tile: Size, pinpoints: Sequence[Size]) -> list[CropView]:
    """The base view, then the tiles of the best pinpoint in row-major order, for an image of ``size``."""
    best_h, best_w = best_resolution(size, pinpoints)
    new_h, new_w = fit_size(size, (best_h, best_w))
    pad_top, pad_left = (best_h - new_h) // 2, (best_w - new_w) // 2
    views = [CropView("base", "base", (Resize(*tile),))]
    for row in range(best_h // tile[0]):
        for col in range(best_w // tile[1]):
            crop = Crop(row * tile[0] - pad_top, col * tile[1] - pad_left, tile[0], tile[1])
            views.append(CropView(f"r{row}c{col}", (row, col), (Resize(new_h, new_w), crop)))
    return views
