"""LLaVA-NeXT glue: the AnyRes crop geometry, and the pruned image encoding built on it.

LLaVA-NeXT encodes an image as a low-resolution *base* crop plus AnyRes *tiles* cut from the
image resized to the best grid pinpoint. The LLM then sees the base crop's tokens in raster
order, followed by the tiles stitched into one large grid, with the rows that only cover the
letterbox padding cut off ("spatial unpadding") and one learned ``image_newline`` after each row.

What pruning keeps of that structure, and why:

* **Base and tile structure is kept.** Each crop goes through the selector separately, with its
  own budget (a fraction applies to each crop's valid tokens, an int count is per crop), so the
  global view and every tile keep some tokens instead of one dense tile taking the whole budget.
* **Unpadding first.** Tile tokens that unpadding would discard are marked as ``padding_mask``
  for the selector: they are never kept and never count towards a fraction.
* **Surviving tokens keep their raster order** inside the base crop and inside the stitched grid,
  so the LLM reads them in the order it was trained on, only with gaps.
* **Newlines follow surviving rows.** A row of the stitched grid keeps its ``image_newline`` when
  at least one of its tokens survives; a row that lost every token loses its newline too. Row
  breaks still separate the content rows the LLM does see, while a fully pruned row does not
  cost a token that marks nothing. Newlines are structure, not content: they are not selector
  decisions and never count towards the budget. A single-crop image keeps its one trailing newline.

``keep=1.0`` (or a selector that keeps everything) reproduces the model's own layout exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from token_reduction.vlm.common import PrunedImage, PrunedLlava, run_selector
from token_reduction.selection.base import Budget

Resize = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(grid (h, w, D), mask (h, w)) -> (grid, mask)``: a family's post-projection resampling."""


@dataclass
class CropLayout:
    """Where one image's crop tokens go in the LLM sequence (geometry only, no features).

    Attributes:
        num_crops: crops of this image fed to the tower (1 = base image only).
        side: ``(rows, cols)`` token grid of one crop.
        tiles: ``(tile_rows, tile_cols)`` AnyRes arrangement of crops ``1..``; ``None`` for one crop.
        window: ``(r0, r1, c0, c1)`` part of the stitched tile grid that survives unpadding.
        resize: optional resampling of the projected tile grid (OneVision's ``anyres_max``).
        resized: the grid shape after ``resize``, for counting; ``None`` when there is no resize.
    """

    num_crops: int
    side: tuple[int, int]
    tiles: tuple[int, int] | None = None
    window: tuple[int, int, int, int] | None = None
    resize: Resize | None = None
    resized: tuple[int, int] | None = None

    def valid_mask(self, num_tokens: int, device: torch.device) -> Tensor:
        """``(num_crops, num_tokens)`` True on tokens that reach the LLM when nothing is pruned."""
        valid = torch.ones(self.num_crops, num_tokens, dtype=torch.bool, device=device)
        if self.tiles is not None:
            big = torch.zeros(self.tiles[0] * self.side[0], self.tiles[1] * self.side[1], dtype=torch.bool, device=device)
            r0, r1, c0, c1 = self.window
            big[r0:r1, c0:c1] = True
            valid[1:] = self.from_big(big)
        return valid

    def to_big(self, crops: Tensor) -> Tensor:
        """``(tiles, H*W, ...)`` -> ``(tile_rows*H, tile_cols*W, ...)``, the model's stitched grid."""
        (tr, tc), (h, w) = self.tiles, self.side
        tail = crops.shape[2:]
        return crops.reshape(tr, tc, h, w, *tail).transpose(1, 2).reshape(tr * h, tc * w, *tail)

    def from_big(self, big: Tensor) -> Tensor:
        (tr, tc), (h, w) = self.tiles, self.side
        return big.reshape(tr, h, tc, w).transpose(1, 2).reshape(tr * tc, h * w)

    def tokens_before(self, num_tokens: int) -> int:
        """LLM positions the unpruned model gives this image (newlines included)."""
        if self.tiles is None:
            return num_tokens + 1
        r0, r1, c0, c1 = self.window
        rows, cols = self.resized or (r1 - r0, c1 - c0)
        return num_tokens + rows * cols + rows

    def pack(self, features: Tensor, keep: Tensor, project: Callable[[Tensor], Tensor], newline: Tensor) -> Tensor:
        """Kept tokens of ``features`` ``(num_crops, N, D)``, projected and laid out for the LLM."""
        base = project(features[0][keep[0]])
        newline = newline.to(base)
        if self.tiles is None:
            return torch.cat([base, newline[None]])
        r0, r1, c0, c1 = self.window
        grid = self.to_big(features[1:])[r0:r1, c0:c1]
        mask = self.to_big(keep[1:])[r0:r1, c0:c1]
        kept = project(grid[mask])
        projected = kept.new_zeros(*mask.shape, kept.shape[-1])
        projected[mask] = kept
        if self.resize is not None:
            projected, mask = self.resize(projected, mask)
        rows = torch.cat([projected, newline.expand(projected.shape[0], 1, -1)], dim=1)
        row_mask = torch.cat([mask, mask.any(dim=1, keepdim=True)], dim=1)
        return torch.cat([base, rows[row_mask]])


def unpad_window(big_shape: tuple[int, int], image_size: Any) -> tuple[int, int, int, int]:
    """The rectangle transformers' ``unpad_image`` keeps, found by unpadding an index grid."""
    rows, cols = big_shape
    kept = unpad_image(torch.arange(rows * cols).view(1, rows, cols), image_size)
    r0, c0 = divmod(int(kept[0, 0, 0]), cols)
    return r0, r0 + kept.shape[1], c0, c0 + kept.shape[2]


class PrunedLlavaNext(PrunedLlava):
    """:class:`PrunedLlava` for ``LlavaNextForConditionalGeneration``."""

    family = "llava_next"
    vision_kwargs = ("vision_feature_layer", "vision_feature_select_strategy")

    def anyres_layout(self, image_size: list[int], num_crops: int) -> CropLayout:
        """Layout of one image cut into ``num_crops`` crops (base first), as the model packs it."""
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        if num_crops == 1:
            return CropLayout(1, (side, side))
        tiles = tuple(get_anyres_image_grid_shape(image_size, self.config.image_grid_pinpoints, vision.image_size))
        if tiles[0] * tiles[1] != num_crops - 1:
            raise ValueError(f"image of size {image_size} has {num_crops - 1} tiles, its AnyRes grid {tiles} needs {tiles[0] * tiles[1]}")
        window = unpad_window((tiles[0] * side, tiles[1] * side), image_size)
        return CropLayout(num_crops, (side, side), tiles, window)

    def layouts(self, image_sizes: Tensor, **family: Any) -> list[CropLayout]:
        """One layout per image; every NeXT image gets base + AnyRes tiles."""
        pinpoints, crop = self.config.image_grid_pinpoints, self.config.vision_config.image_size
        sizes = [size.tolist() if isinstance(size, Tensor) else list(size) for size in image_sizes]
        return [self.anyres_layout(size, image_size_to_num_patches(size, pinpoints, crop)) for size in sizes]

    def vision_features(
        self,
        pixel_values: Tensor,
        num_crops: list[int],
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        modality: str = "image",
    ) -> Tensor:
        """``(sum(num_crops), N, D)`` selected-layer features after the select strategy.

        Layer and strategy default to the config's, as in the model; the tower's own outputs are
        recorded for the call's ``image_outputs`` (or ``video_outputs``).
        """
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pixels[:n] for pixels, n in zip(pixel_values, num_crops)])
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must have 4 or 5 dims, got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[0] != sum(num_crops):
            raise ValueError(f"pixel_values hold {pixel_values.shape[0]} crops but image_sizes imply {sum(num_crops)}")
        layer, strategy = self.feature_options(vision_feature_layer, vision_feature_select_strategy)
        out = self.inner.vision_tower(pixel_values, output_hidden_states=layer, return_dict=True)
        self.record_encoder_output(modality, out)
        if isinstance(layer, int):
            features = out.hidden_states[layer]
        else:
            features = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if strategy == "default":
            features = features[:, 1:]
        return features

    def selector_view(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **family: Any,
    ) -> tuple[list[CropLayout], Tensor, Tensor, tuple[int, int] | None]:
        """What the selector is shown: layouts, features ``(crops, N, D)``, valid mask ``(crops, N)``, token grid."""
        layouts = self.layouts(image_sizes, **family)
        num_crops = [layout.num_crops for layout in layouts]
        features = self.vision_features(pixel_values, num_crops, vision_feature_layer, vision_feature_select_strategy)
        vision = self.config.vision_config
        num_tokens, side = features.shape[1], vision.image_size // vision.patch_size
        if num_tokens != side * side and any(layout.tiles for layout in layouts):
            raise ValueError(f"AnyRes tiles need a {side}x{side} token grid per crop, the tower gives {num_tokens} tokens")
        valid = torch.cat([layout.valid_mask(num_tokens, features.device) for layout in layouts])
        return layouts, features, valid, (side, side) if num_tokens == side * side else None

    def _view_kwargs(self, processor_outputs: dict[str, Any]) -> dict[str, Any]:
        names = self.family_kwargs + self.vision_kwargs
        return {name: value for name, value in processor_outputs.items() if name in names and value is not None}

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, image_sizes: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """One ``(N, D)`` tensor per *crop* (each image's base crop, then its AnyRes tiles), as the selector sees it.

        The crop is the selector's unit here (each gets its own budget); tokens that unpadding
        discards are shown as padding (:meth:`selector_valid`). Other processor outputs are ignored.
        """
        _, features, _, _ = self.selector_view(pixel_values, image_sizes, **self._view_kwargs(processor_outputs))
        return list(features)

    @torch.no_grad()
    def selector_valid(self, pixel_values: Tensor, image_sizes: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """Per crop of :meth:`selector_features`, ``(N,)`` True on tokens the LLM would read (False: ``padding_mask``)."""
        _, _, valid, _ = self.selector_view(pixel_values, image_sizes, **self._view_kwargs(processor_outputs))
        return list(valid)

    def selector_grids(self, pixel_values: Tensor, image_sizes: Tensor, **processor_outputs: Any) -> list[tuple[int, int] | None]:
        """The token grid of each crop in :meth:`selector_features` (``None`` when a CLS token is kept)."""
        family = self._view_kwargs(processor_outputs)
        layer = family.get("vision_feature_layer", self.config.vision_feature_layer)
        strategy = family.get("vision_feature_select_strategy", self.config.vision_feature_select_strategy)
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        layouts = self.layouts(image_sizes, **{k: v for k, v in family.items() if k not in ("vision_feature_layer", "vision_feature_select_strategy")})
        crops = sum(layout.num_crops for layout in layouts)
        num_tokens = self.vision_features(pixel_values.flatten(0, -4)[:1], [1], layer, strategy).shape[1] if crops else 0
        return [(side, side) if num_tokens == side * side else None] * crops

    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor,
        keep: Budget | None,
        threshold: float | None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **family: Any,
    ) -> list[PrunedImage]:
        """Vision tower -> selector -> projector on kept tokens -> the model's per-image layout.

        ``vision_feature_layer``/``vision_feature_select_strategy`` of the call win over the config's.
        """
        options = (vision_feature_layer, vision_feature_select_strategy)
        layouts, features, valid, grid = self.selector_view(pixel_values, image_sizes, *options, **family)
        num_tokens = features.shape[1]
        keep_mask, features = run_selector(self.selector, features, valid, keep, threshold, grid)
        images, start = [], 0
        for layout in layouts:
            crops = slice(start, start + layout.num_crops)
            packed = layout.pack(features[crops], keep_mask[crops], self.inner.multi_modal_projector, self.inner.image_newline)
            images.append(PrunedImage(packed, layout.tokens_before(num_tokens)))
            start += layout.num_crops
        return images
