"""Mistral3 / Pixtral glue: variable-size images read in rows, ``[IMG_BREAK]`` after each row, ``[IMG_END]`` last.

A Pixtral tower encodes each image at its own size (``image_sizes``, multiples of the patch size
times ``spatial_merge_size``). Mistral3's projector RMS-normalises the selected-layer tokens, then a
*patch merger* concatenates each ``m x m`` window (``m = spatial_merge_size``) and maps it back to the
vision width, and an MLP maps that to the LLM. The LLM reads the merged grid row by row: ``cols``
``[IMG]`` tokens then ``[IMG_BREAK]``, the last row ending with ``[IMG_END]`` instead.

What pruning does, and why:

* **Where the selector looks: the merged tokens** (norm + patch merger output, vision width), one
  per ``[IMG]`` the LLM reads, with that image's ``(rows, cols)`` merged grid. Selecting on the
  tower's own patches would force a rule for partially kept ``m x m`` windows; the merged tokens
  are the unit the LLM pays for. Images of different sizes go to the selector grouped by grid.
  A selector for Mistral3 must be trained on these features (``selector_features``), since they
  have the tower's width but not its statistics.
* **Budget:** a fraction applies to each image's ``rows * cols`` merged tokens. ``[IMG_BREAK]`` and
  ``[IMG_END]`` are layout: never selector decisions, never counted in the budget.
* **Layout:** kept tokens stay in raster order. A row that keeps at least one token keeps its
  separator; a row that keeps none loses its ``[IMG_BREAK]`` too (docs/llava.md's rule for
  ``image_newline``). The last surviving row is closed by ``[IMG_END]``, which always stays: the
  LLM reads the layout the model itself produces for a grid made of the surviving rows.
* **Positions** are sequential (1-D RoPE): the shared rule applies.
* ``tokens_before``/``tokens_after`` count each image's LLM positions including separators, so a
  row of the batch shrinks by exactly ``before - after``; ``images[i].kept`` is the ``(rows, cols)``
  mask of kept ``[IMG]`` tokens.

Pixtral-12B (``model_type == "llava"`` with a Pixtral tower, no merger) uses the same layout with
``m = 1``: :class:`PrunedLlavaPixtral`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget
from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedLlava, placeholder_slots, select_per_grid
from token_reduction.vlm.llava15 import PrunedLlava15, selected_layers


@dataclass
class RowImage(PrunedImage):
    """One image's kept ``[IMG]`` embeddings plus its ``(rows, cols)`` keep mask over the LLM's grid."""

    kept: Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.kept.shape[0]), int(self.kept.shape[1])

    @property
    def after(self) -> int:
        """LLM positions after pruning: kept tokens plus one separator per surviving row (at least ``[IMG_END]``)."""
        return int(self.features.shape[0]) + max(int(self.kept.any(dim=1).sum()), 1)


def row_layout_dropped(slots: Tensor, images: list[RowImage]) -> tuple[Tensor, Tensor]:
    """``(dropped, spans)`` ``(B, L)`` masks for row-laid-out images matched to ``[IMG]`` rows in reading order.

    ``slots`` marks the ``[IMG]`` placeholders. Each image must appear as ``rows`` runs of exactly
    ``cols`` of them, each run followed by one separator token and the next run starting right
    after it; the separators' ids are not needed. ``spans`` covers placeholders and separators.
    """
    dropped = torch.zeros_like(slots)
    spans_mask = torch.zeros_like(slots)
    item = 0
    for b in range(slots.shape[0]):
        is_image = slots[b].long()
        edges = torch.diff(is_image, prepend=is_image.new_zeros(1), append=is_image.new_zeros(1))
        starts, ends = (edges == 1).nonzero().squeeze(1).tolist(), (edges == -1).nonzero().squeeze(1).tolist()
        run = 0
        while run < len(starts):
            if item >= len(images):
                raise UserError("input_ids", "[IMG] tokens", f"hold more images than the {len(images)} encoded; pass every image")
            image = images[item]
            rows, cols = image.grid
            spans = list(zip(starts[run : run + rows], ends[run : run + rows]))
            fits = len(spans) == rows and all(e - s == cols for s, e in spans) and spans[-1][1] < slots.shape[1]
            if not fits or any(spans[r + 1][0] != spans[r][1] + 1 for r in range(rows - 1)):
                raise UserError(
                    "input_ids",
                    f"image {item}",
                    f"expected {rows} rows of {cols} [IMG] tokens, each followed by [IMG_BREAK] (the last by [IMG_END]); "
                    "expand the prompt with the processor configured for this model (patch_size, spatial_merge_size)",
                )
            kept_rows = image.kept.any(dim=1).tolist()
            for r, (s, e) in enumerate(spans):
                spans_mask[b, s : e + 1] = True
                dropped[b, s:e] = ~image.kept[r].to(slots.device)
                dropped[b, e] = not kept_rows[r] and r < rows - 1  # an emptied row loses its [IMG_BREAK]
            if not kept_rows[-1] and any(kept_rows):
                last = max(r for r, k in enumerate(kept_rows) if k)
                dropped[b, spans[last][1]] = True  # [IMG_END] closes the last surviving row instead
            run, item = run + rows, item + 1
    if item != len(images):
        raise UserError("input_ids", "[IMG] tokens", f"{len(images)} images were encoded but the prompts hold {item}")
    return dropped, spans_mask


class PrunedPixtralRows(PrunedLlava):
    """Shared machinery of Pixtral-tower families; subclasses say how tokens are merged and projected."""

    family = "mistral3"
    vision_kwargs = ("vision_feature_layer",)
    tokens_by_name = True

    # ------------------------------------------------------------------------------ family hooks
    @property
    def merge(self) -> int:
        return 1

    def merged_tokens(self, selected: Tensor, image_sizes: Tensor) -> Tensor:
        """``(sum of merged tokens, D)``: the tokens the LLM reads, before the LLM-side projection."""
        return selected

    def project(self, tokens: Tensor, image_sizes: Tensor) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------ features
    @property
    def feature_dim(self) -> int:
        """Merged tokens have the tower's width (Mistral3's merger maps ``m*m`` patches back to it)."""
        return self.config.vision_config.hidden_size

    def grids(self, image_sizes: Any) -> list[tuple[int, int]]:
        """``(rows, cols)`` of merged tokens per image, as the model and processor compute them."""
        if image_sizes is None:
            raise UserError(type(self).__name__, "image_sizes", "is required; pass the processor's image_sizes output")
        step = self.config.vision_config.patch_size * self.merge
        return [(int(h) // step, int(w) // step) for h, w in torch.as_tensor(image_sizes).tolist()]

    def selected(self, pixel_values: Tensor, image_sizes: Tensor, vision_feature_layer: int | list[int] | None = None) -> Tensor:
        """``(sum of patches, D)`` selected-layer tower features of all images, concatenated."""
        layer = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        out = self.inner.vision_tower(pixel_values, image_sizes=image_sizes, output_hidden_states=layer, return_dict=True)
        self.record_encoder_output("image", out)
        return selected_layers(out.hidden_states, layer, None).squeeze(0)

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, image_sizes: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """One ``(rows * cols, D)`` tensor of merged tokens per image: exactly what the selector sees."""
        sizes = torch.as_tensor(image_sizes, device=pixel_values.device)
        selected = self.selected(pixel_values, sizes, processor_outputs.get("vision_feature_layer"))
        return list(self.merged_tokens(selected, sizes).split([r * c for r, c in self.grids(image_sizes)]))

    def selector_grids(self, image_sizes: Tensor, **processor_outputs: Any) -> list[tuple[int, int]]:
        return self.grids(image_sizes)

    # ------------------------------------------------------------------------------ encoding
    def encode_images(
        self,
        pixel_values: Tensor,
        image_sizes: Any,
        keep: Budget | None,
        threshold: float | None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **family: Any,
    ) -> list[PrunedImage]:
        """Tower -> merger -> selector per grid -> projection of the merged tokens -> kept rows."""
        if vision_feature_select_strategy not in (None, "full"):
            raise UserError(type(self).__name__, "vision_feature_select_strategy", "must be 'full' for a Pixtral tower")
        grids = self.grids(image_sizes)
        image_sizes = torch.as_tensor(image_sizes, device=pixel_values.device)
        merged = self.merged_tokens(self.selected(pixel_values, image_sizes, vision_feature_layer), image_sizes)
        counts = [r * c for r, c in grids]
        masks, chosen = select_per_grid(self.selector, list(merged.split(counts)), grids, keep, threshold)
        # Project every merged token in one call, as the model does, so kept tokens are bit-identical.
        projected = self.project(torch.cat(chosen), image_sizes).split(counts)
        return [
            RowImage(tokens[mask], r * (c + 1), mask.view(r, c)) for tokens, mask, (r, c) in zip(projected, masks, grids)
        ]

    def prepare(self, input_ids: Tensor | None, pixel_values: Tensor | None = None, *args: Any, **kwargs: Any) -> PrunedInputs:
        """The shared prepare, dropping each image's pruned ``[IMG]`` and the emptied rows' separators."""
        where = type(self).__name__
        if input_ids is None and kwargs.get("inputs_embeds") is None:
            raise UserError(where, "input_ids", "pass input_ids or inputs_embeds: they hold the [IMG] rows to shorten")
        if pixel_values is None:
            raise UserError(where, "pixel_values", "nothing to prune: pass the processor's pixel_values")
        return super().prepare(input_ids, pixel_values, *args, **kwargs)

    def decided_drops(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, images: list[PrunedImage]) -> dict[str, Tensor]:
        """Pruned ``[IMG]`` and emptied rows' separators, decided row by row (:func:`row_layout_dropped`)."""
        embed = self.embed_token if inputs_embeds is not None else None
        dropped, spans = row_layout_dropped(placeholder_slots(input_ids, inputs_embeds, self.config.image_token_id, embed), images)
        return {"dropped": dropped, "layout": spans}


class PrunedMistral3(PrunedPixtralRows):
    """:class:`PrunedLlava` for ``Mistral3ForConditionalGeneration`` (Pixtral tower + patch merger)."""

    family = "mistral3"

    @property
    def merge(self) -> int:
        return int(self.config.spatial_merge_size)

    def merged_tokens(self, selected: Tensor, image_sizes: Tensor) -> Tensor:
        projector = self.inner.multi_modal_projector
        return projector.patch_merger(projector.norm(selected), image_sizes)

    def project(self, tokens: Tensor, image_sizes: Tensor) -> Tensor:
        projector = self.inner.multi_modal_projector
        return projector.linear_2(projector.act(projector.linear_1(tokens)))


class PrunedLlavaPixtral(PrunedPixtralRows, PrunedLlava15):
    """Pixtral-12B: ``LlavaForConditionalGeneration`` with a Pixtral tower; rows as Mistral3, no merger."""

    family = "llava"
    vision_kwargs = ("vision_feature_layer", "vision_feature_select_strategy")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.vision_feature_select_strategy != "full":
            raise UserError(
                "LlavaConfig", "vision_feature_select_strategy",
                "must be 'full' with a Pixtral tower (variable-size images have no CLS token to drop)",
            )  # fmt: skip

    @property
    def feature_dim(self) -> int:
        return PrunedLlava.feature_dim.fget(self)  # type: ignore[attr-defined]

    def project(self, tokens: Tensor, image_sizes: Tensor) -> Tensor:
        return self.inner.multi_modal_projector(tokens[None])[0]
