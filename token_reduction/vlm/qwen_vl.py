"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 glue: prune the merged tokens the LLM reads.

Qwen's vision tower ends with a 2x2 *patch merger*: every ``spatial_merge_size**2`` block of
patches becomes one token of the text hidden size, and the LLM reads exactly one position per
merged token (``image_grid_thw`` ``(t, h, w)`` in patches gives ``t x h/2 x w/2`` tokens, raster
order per temporal slice). What pruning does, and why:

* **The selector looks at the merged tokens** (:meth:`PrunedQwenVL.selector_features`, dim = the
  LLM's hidden size, grid ``(h/2, w/2)``). These are the tokens as the LLM reads them, so a
  dropped token is exactly one LLM position saved, and the selector judges what the LLM would see.
  Selecting among the pre-merger patches instead would have to drop whole 2x2 blocks anyway
  (the merger concatenates them) and would judge features the LLM never reads. The vision tower
  runs in full (its window attention needs every patch); the saving is the LLM's.
* **Budgets per image, per frame for videos.** Every image (every temporal slice of a video) is
  one selector crop with its own budget; with ``temporal=True`` a video's frames share a budget
  spent by novelty (:class:`~token_reduction.selection.temporal.TemporalSelection`).
* **Positions stay true** (:mod:`token_reduction.vlm.qwen_positions`): kept tokens keep their
  unpruned ``(t, h, w)`` rotary positions, text after an image keeps its unpruned position, and
  ``generate`` continues from the unpruned offsets (``rope_deltas``).
* **Layout tokens** (``<|vision_start|>``, ``<|vision_end|>``, Qwen3-VL's frame timestamps) are
  text, never counted in the budget, always kept.
* **Qwen3-VL deepstack**: features of intermediate vision layers, added to the first LLM layers
  at the visual positions, are pruned with the same mask. Merging methods emit merged tokens at a
  representative position; that position keeps its own deepstack features.

The calls are the shared wrapper's (:class:`~token_reduction.vlm.common.PrunedLlava`), so Qwen
behaves as a drop-in the same way: placeholders are found as the model finds them (masked ones
included; in ``inputs_embeds`` when there are no ``input_ids``), ``labels``/``shift_labels``/token
types follow the kept slots, ``image_outputs`` carry the tower's fields. When nothing is dropped
(``keep=1.0``) the caller's tensors go to the model untouched, so logits and generated ids are the
unpatched model's, bit for bit. The model itself is not patched; after pruning only its
``rope_deltas`` state is set to the pruned prompt's value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget, SelectionMethod
from token_reduction.vlm.common import UNSET, PrunedInputs, PrunedLlava, select_per_grid, validate_keep
from token_reduction.vlm.qwen_positions import (
    QwenImage,
    QwenPrunedInputs,
    QwenVideo,
    dropped_slots,
    mask_positions,
    rope_deltas,
    unpruned_positions,
)
from token_reduction.vlm.sequence import placeholder_slots, shorten_placeholders
from token_reduction.vlm.video import select_frames

Grid = tuple[int, int, int]


class PrunedQwenVL(PrunedLlava):
    """:class:`PrunedLlava` for Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (``...ForConditionalGeneration``).

    Call it with the processor's outputs (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``; videos: ``pixel_values_videos``, ``video_grid_thw``,
    ``second_per_grid_ts``), by keyword, as the model. ``forward``/``generate`` are the shared
    wrapper's; :meth:`prepare` keeps Qwen's positions.
    """

    family = "qwen_vl"
    family_kwargs = ("image_grid_thw", "mm_token_type_ids")
    video_kwargs = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    selector_where = "the {family} patch merger (the tokens the LLM reads)"

    def __init__(self, model: nn.Module, selector: SelectionMethod, *args: Any, **kwargs: Any) -> None:
        if not hasattr(getattr(model, "model", None), "get_rope_index"):
            raise TypeError(f"{type(model).__name__} has no model.get_rope_index; it is not a Qwen-VL model")
        self.family = str(getattr(model.config, "model_type", self.family))
        super().__init__(model, selector, *args, **kwargs)
        self.last: QwenPrunedInputs | None = None

    # ------------------------------------------------------------------------------ geometry
    @property
    def feature_dim(self) -> int:
        """Dim of the merged tokens: the LLM's hidden size."""
        return int(self.config.get_text_config().hidden_size)

    @property
    def merge_size(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def llm_grids(self, grid_thw: Tensor) -> list[Grid]:
        """``(t, rows, cols)`` of merged tokens per item, from the processor's patch grid."""
        merge = self.merge_size
        return [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grid_thw.tolist()]

    def selector_grids(self, image_grid_thw: Tensor, **processor_outputs: Any) -> list[tuple[int, int]]:
        """The token grid ``(rows, cols)`` of each image in :meth:`selector_features`."""
        return [(h, w) for _, h, w in self.llm_grids(image_grid_thw)]

    @torch.no_grad()
    def selector_features(self, pixel_values: Tensor, image_grid_thw: Tensor, **processor_outputs: Any) -> list[Tensor]:
        """What the selector sees: one ``(rows * cols, D)`` tensor of merged tokens per image."""
        return self.vision_outputs(pixel_values, image_grid_thw, video=False)[0]

    # ------------------------------------------------------------------------------ encoding
    def vision_outputs(self, pixels: Tensor, grid_thw: Tensor, video: bool) -> tuple[list[Tensor], list[list[Tensor]] | None]:
        """Merged tokens per item and (Qwen3-VL) deepstack features ``[layer][item]``, from the model's own encoder."""
        encode = self.inner.get_video_features if video else self.inner.get_image_features
        out = encode(pixels, grid_thw, return_dict=True)
        self.record_encoder_output("video" if video else "image", out)  # the tower's fields reach image_outputs
        deep = getattr(out, "deepstack_features", None)
        return list(out.pooler_output), ([list(layer) for layer in deep] if deep else None)

    def select_items(
        self, tokens: list[Tensor], grids: list[Grid], keep: Budget | None, threshold: float | None, temporal: bool = False
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Keep mask ``(N,)`` and tokens (merged ones written in) per item; each temporal slice is a crop.

        Crops sharing a grid go through the selector in one call; ``temporal`` selects across a video's frames.
        """
        for item, (t, h, w) in zip(tokens, grids):
            if item.shape[0] != t * h * w:
                raise ValueError(f"the vision tower gave {item.shape[0]} tokens for a {t}x{h}x{w} merged grid")
        if temporal:
            masks: list[Tensor] = [torch.empty(0)] * len(tokens)
            chosen: list[Tensor] = [torch.empty(0)] * len(tokens)
            for i, (item, (t, h, w)) in enumerate(zip(tokens, grids)):
                frames = item.view(t, h * w, -1)
                mask, picked, _ = select_frames(self.selector, frames, keep, threshold, (h, w), True, self.temporal_options)
                masks[i], chosen[i] = mask.reshape(-1), picked.reshape(item.shape)
            return masks, chosen
        return select_per_grid(self.selector, tokens, [(h, w) for _, h, w in grids], keep, threshold, [t for t, _, _ in grids])
        return masks, chosen

    def encode_images(
        self, pixel_values: Tensor, image_grid_thw: Tensor | None, keep: Budget | None, threshold: float | None, **family: Any
    ) -> list[QwenImage]:
        """Merger output -> selector -> kept tokens per image, in raster order."""
        if image_grid_thw is None:
            raise UserError(self.family, "image_grid_thw", "missing; pass every output of the model's processor")
        tokens, deep = self.vision_outputs(pixel_values, image_grid_thw, video=False)
        grids = self.llm_grids(image_grid_thw)
        masks, chosen = self.select_items(tokens, grids, keep, threshold)
        return [
            QwenImage(
                features=chosen[i][masks[i]], before=int(masks[i].numel()), mask=masks[i], grid=grids[i],
                deepstack=[layer[i][masks[i]] for layer in deep] if deep else None,
            )  # fmt: skip
            for i in range(len(tokens))
        ]

    def encode_videos(
        self,
        keep: Budget | None,
        threshold: float | None,
        temporal: bool,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        **ignored: Any,
    ) -> list[QwenVideo]:
        """Merger output -> selector (per frame, or across frames) -> kept tokens per video."""
        if video_grid_thw is None:
            raise UserError(self.family, "video_grid_thw", "missing; pass every output of the model's processor")
        tokens, deep = self.vision_outputs(pixel_values_videos, video_grid_thw, video=True)
        grids = self.llm_grids(video_grid_thw)
        masks, chosen = self.select_items(tokens, grids, keep, threshold, temporal)
        videos = []
        for i, (t, h, w) in enumerate(grids):
            videos.append(
                QwenVideo(
                    features=chosen[i][masks[i]], before=t * h * w, frames_before=[h * w] * t,
                    frames_after=[int(n) for n in masks[i].view(t, -1).sum(dim=1)], newlines=0, temporal=temporal,
                    mask=masks[i], grid=grids[i], deepstack=[layer[i][masks[i]] for layer in deep] if deep else None,
                )  # fmt: skip
            )
        return videos

    def encoder_outputs(self, images: list[QwenImage], videos: list[QwenVideo]) -> dict[str, Any]:
        """``mm_encoder_outputs``: per-item kept tokens (and deepstack features, layer by layer).

        The tower's own fields (:meth:`record_encoder_output`) ride along, so ``image_outputs``
        carry what the unpatched model returns; ``pooler_output`` is what the LLM read.
        """
        outputs: dict[str, Any] = {}
        for key, items in (("image", images), ("video", videos)):
            if not items:
                continue
            pooled = tuple(item.features for item in items)  # a tuple, as the model's torch.split gives
            fields = self._fields.get(key, {})
            if items[0].deepstack is None:
                outputs[key] = BaseModelOutputWithPooling(pooler_output=pooled, **fields)
                continue
            from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

            layers = [tuple(item.deepstack[layer] for item in items) for layer in range(len(items[0].deepstack))]
            outputs[key] = BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=layers, **fields)
        return outputs

    # ------------------------------------------------------------------------------ sequence
    def prepare(  # type: ignore[override]
        self,
        input_ids: Tensor | None,
        pixel_values: Tensor | None = None,
        image_sizes: Any = None,
        attention_mask: Tensor | None = None,
        *,
        image_grid_thw: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        second_per_grid_ts: Tensor | None = None,
        mm_token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        padding_side: str | None = None,
        inputs_embeds: Tensor | None = None,
        extra: dict[str, Tensor] | None = None,
    ) -> QwenPrunedInputs:
        """Encode and prune images and videos, then shorten the prompt keeping true positions (no LLM call).

        The shared :func:`shorten_placeholders` shortens ``input_ids`` and/or ``inputs_embeds``
        (placeholders found as the model finds them, masked ones included), labels and per-token
        ``extra`` tensors; this method decides *which* placeholders go (those of dropped tokens)
        and carries the unpruned positions. Nothing dropped: the caller's tensors, untouched.
        ``image_sizes`` is unused (the shared wrapper's positional slot).
        """
        if input_ids is None and inputs_embeds is None:
            raise UserError(self.family, "input_ids", "missing; pass input_ids or inputs_embeds: they hold the placeholders to shorten")
        if pixel_values is None and pixel_values_videos is None:
            raise UserError(self.family, "pixel_values", "nothing to prune; pass pixel_values (images) or pixel_values_videos")
        keep = self.keep if keep is UNSET else validate_keep(keep)
        threshold = self.threshold if threshold is UNSET else threshold
        temporal = self.temporal if temporal is UNSET else bool(temporal)
        self._fields = {}
        images = self.encode_images(pixel_values, image_grid_thw, keep, threshold) if pixel_values is not None else []
        videos = (
            self.encode_videos(keep, threshold, temporal, pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw)
            if pixel_values_videos is not None
            else []
        )
        reference = input_ids if input_ids is not None else inputs_embeds
        mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device) if attention_mask is None else attention_mask
        embed = self.embed_token if input_ids is None else None
        video_token_id = getattr(self.config, "video_token_id", None)
        slots = torch.zeros(reference.shape[:2], dtype=torch.bool, device=reference.device)
        dropped = torch.zeros_like(slots)
        for token_id, items, what in ((self.config.image_token_id, images, "image"), (video_token_id, videos, "video")):
            if items:
                found = placeholder_slots(input_ids, inputs_embeds, token_id, embed)
                dropped |= dropped_slots(found, torch.cat([item.mask for item in items]), what)
                slots |= found
        grids = {"image_grid_thw": image_grid_thw, "video_grid_thw": video_grid_thw, "second_per_grid_ts": second_per_grid_ts}
        positions = position_ids
        if bool(dropped.any()):
            unpruned = unpruned_positions(self.inner, input_ids, mask, slots, position_ids, mm_token_type_ids, **grids)
            # shorten_placeholders subtracts the dropped tokens before each slot from given positions;
            # adding them first leaves every kept slot its unpruned (t, h, w).
            positions = unpruned + dropped.long().cumsum(dim=1).to(unpruned.device)
        extra = dict(extra or {}) | ({"mm_token_type_ids": mm_token_type_ids} if mm_token_type_ids is not None else {})
        prepared = shorten_placeholders(
            input_ids, attention_mask, self.config.image_token_id, images,
            pad_token_id=self.pad_token_id(), padding_side=padding_side or self.padding_side, position_ids=positions,
            labels=labels, videos=videos, video_token_id=video_token_id if videos else None,
            inputs_embeds=inputs_embeds, embed=self.embed_token if inputs_embeds is not None else None,
            extra=extra, dropped=dropped,
        )  # fmt: skip
        qwen: dict[str, Any] = {"passthrough": {name: value for name, value in grids.items() if value is not None}}
        if prepared.dropped:
            qwen |= {
                "text_position_ids": mask_positions(prepared.attention_mask),
                "rope_deltas": rope_deltas(prepared.position_ids, prepared.attention_mask),
                "kept": mask.bool() & ~dropped,
            }  # fmt: skip
            self.inner.rope_deltas = qwen["rope_deltas"]  # decoding steps without position_ids continue from here
        prepared = QwenPrunedInputs.extend(prepared, **qwen)
        prepared.mm_encoder_outputs = self.encoder_outputs(images, videos)
        self.last = prepared
        return prepared

    def generate_inputs(self, prepared: PrunedInputs, positions_given: bool) -> dict[str, Any]:
        """``model.generate`` keywords: after pruning, 4-row positions (row 0: text positions for the causal mask).

        Nothing dropped: the caller's inputs and grids, so ``generate`` places the prompt itself.
        """
        kwargs = prepared.generate_kwargs()
        if not positions_given and not prepared.dropped:
            kwargs.pop("position_ids", None)
        kwargs["mm_encoder_outputs"] = {name: type(out)(**out) for name, out in prepared.mm_encoder_outputs.items()}
        return kwargs


__all__ = ["PrunedQwenVL"]
