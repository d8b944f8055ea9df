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

``keep=1.0`` reproduces the unpatched model's logits and generated ids exactly. The model itself
is not patched; only its ``rope_deltas`` state is set to the pruned prompt's value.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from token_reduction.errors import UserError
from token_reduction.selection.base import Budget, SelectionMethod
from token_reduction.vlm.common import UNSET, PrunedLlava, check_selector, run_selector, validate_keep
from token_reduction.vlm.qwen_positions import (
    QwenImage,
    QwenPrunedInputs,
    QwenVideo,
    compact,
    keep_slots,
    modality_types,
    spatial_positions,
)
from token_reduction.vlm.video import select_frames

Grid = tuple[int, int, int]
VISUAL_KWARGS = ("image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")


class PrunedQwenVL(PrunedLlava):
    """:class:`PrunedLlava` for Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (``...ForConditionalGeneration``).

    Call it with the processor's outputs (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``, ``mm_token_type_ids``; videos: ``pixel_values_videos``, ``video_grid_thw``,
    ``second_per_grid_ts``). Arguments after ``pixel_values`` are keyword-only.
    """

    family = "qwen_vl"
    family_kwargs = ("image_grid_thw", "mm_token_type_ids")
    video_kwargs = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
    token_kwargs = ("shift_labels", "token_type_ids", "mm_token_type_ids")

    def __init__(
        self,
        model: nn.Module,
        selector: SelectionMethod,
        keep: Budget | None = None,
        threshold: float | None = None,
        padding_side: str | None = None,
        temporal: bool = False,
        temporal_options: dict[str, Any] | None = None,
    ) -> None:
        # Not super().__init__: the base reads ``vision_feature_layer``, which Qwen configs lack.
        if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
            raise RuntimeError(
                f"{type(model).__name__}.forward has no `mm_encoder_outputs` argument; pruning needs transformers >= 5"
            )
        if not hasattr(model.model, "get_rope_index"):
            raise TypeError(f"{type(model).__name__} has no model.get_rope_index; it is not a Qwen-VL model")
        self.family = str(getattr(model.config, "model_type", self.family))
        self.model = model
        self.inner = model.model
        self.selector = selector
        self.keep = validate_keep(keep)
        self.threshold = threshold
        self.padding_side = padding_side
        self.temporal = bool(temporal)
        self.temporal_options: dict[str, Any] = dict(temporal_options or {})
        check_selector(selector, self.feature_dim, f"the {self.family} patch merger (the tokens the LLM reads)")
        if isinstance(selector, nn.Module):
            selector.to(self.device).eval()
        self.last: QwenPrunedInputs | None = None
        self._fields: dict[str, dict[str, Any]] = {}

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
        masks: list[Tensor] = [torch.empty(0)] * len(tokens)
        chosen: list[Tensor] = [torch.empty(0)] * len(tokens)
        if temporal:
            for i, (item, (t, h, w)) in enumerate(zip(tokens, grids)):
                frames = item.view(t, h * w, -1)
                mask, picked, _ = select_frames(self.selector, frames, keep, threshold, (h, w), True, self.temporal_options)
                masks[i], chosen[i] = mask.reshape(-1), picked.reshape(item.shape)
            return masks, chosen
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, h, w) in enumerate(grids):
            groups.setdefault((h, w), []).append(i)
        for (h, w), members in groups.items():
            crops = torch.cat([tokens[i].view(grids[i][0], h * w, -1) for i in members])
            valid = torch.ones(crops.shape[:2], dtype=torch.bool, device=crops.device)
            mask, picked = run_selector(self.selector, crops, valid, keep, threshold, (h, w))
            start = 0
            for i in members:
                stop = start + grids[i][0]
                masks[i], chosen[i] = mask[start:stop].reshape(-1), picked[start:stop].reshape(tokens[i].shape)
                start = stop
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
        """``mm_encoder_outputs``: per-item kept tokens (and deepstack features, layer by layer)."""
        outputs: dict[str, Any] = {}
        for key, items in (("image", images), ("video", videos)):
            if not items:
                continue
            pooled = [item.features for item in items]
            if items[0].deepstack is None:
                outputs[key] = BaseModelOutputWithPooling(pooler_output=pooled)
                continue
            from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

            layers = [[item.deepstack[layer] for item in items] for layer in range(len(items[0].deepstack))]
            outputs[key] = BaseModelOutputWithDeepstackFeatures(pooler_output=pooled, deepstack_features=layers)
        return outputs

    # ------------------------------------------------------------------------------ sequence
    def unpruned_positions(
        self, input_ids: Tensor, attention_mask: Tensor, types: Tensor, position_ids: Tensor | None, **grids: Any
    ) -> Tensor:
        """``(3, B, L)`` positions of the unpruned prompt: the caller's, else the model's ``get_rope_index``."""
        if position_ids is not None:
            return spatial_positions(position_ids)
        given = {name: value for name, value in grids.items() if value is not None}
        positions, _ = self.inner.get_rope_index(input_ids, mm_token_type_ids=types, attention_mask=attention_mask, **given)
        return positions

    def prepare(  # type: ignore[override]
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
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
        extra: dict[str, Tensor] | None = None,
    ) -> QwenPrunedInputs:
        """Encode and prune images and videos, then shorten the prompt keeping true positions (no LLM call).

        Without ``mm_token_type_ids`` the placeholder types are derived from ``input_ids`` (the
        unpatched model would then fall back to 1-D positions; the wrapper keeps Qwen's 3-D ones).
        ``extra`` holds other per-token ``(B, L)`` tensors (``token_type_ids``, ``shift_labels``).
        """
        if input_ids is None:
            raise UserError(self.family, "input_ids", "missing; pruning finds the placeholders in them (inputs_embeds are not enough)")
        if pixel_values is None and pixel_values_videos is None:
            raise UserError(self.family, "pixel_values", "nothing to prune; pass pixel_values (images) or pixel_values_videos")
        keep = self.keep if keep is UNSET else validate_keep(keep)
        threshold = self.threshold if threshold is UNSET else threshold
        temporal = self.temporal if temporal is UNSET else bool(temporal)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        video_token_id = getattr(self.config, "video_token_id", None)
        types = mm_token_type_ids
        if types is None:
            types = modality_types(input_ids, self.config.image_token_id, video_token_id)
        images = self.encode_images(pixel_values, image_grid_thw, keep, threshold) if pixel_values is not None else []
        videos = (
            self.encode_videos(keep, threshold, temporal, pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw)
            if pixel_values_videos is not None
            else []
        )
        kept: dict[int, tuple[Tensor, str]] = {}
        if images:
            kept[self.config.image_token_id] = (torch.cat([image.mask for image in images]), "image")
        if videos:
            kept[video_token_id] = (torch.cat([video.mask for video in videos]), "video")
        slots = keep_slots(input_ids, attention_mask, kept)  # checks the placeholder counts first
        positions = self.unpruned_positions(
            input_ids, attention_mask, types, position_ids,
            image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
        )  # fmt: skip
        prepared = compact(
            slots, attention_mask, positions,
            input_ids=input_ids, pad_token_id=self.pad_token_id(), padding_side=padding_side or self.padding_side,
            mm_token_type_ids=types, labels=labels, extra=extra, images=images, videos=videos,
            mm_encoder_outputs=self.encoder_outputs(images, videos),
        )  # fmt: skip
        self.inner.rope_deltas = prepared.rope_deltas
        self.last = prepared
        return prepared

    def _visual(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {name: kwargs.pop(name) for name in VISUAL_KWARGS if name in kwargs}

    def _tokens(self, kwargs: dict[str, Any]) -> dict[str, Tensor]:
        """Per-token tensors besides ids, mask, types and labels, to compact with the tokens."""
        names = [name for name in self.token_kwargs if name != "mm_token_type_ids" and kwargs.get(name) is not None]
        return {name: kwargs.pop(name) for name in names}

    # ------------------------------------------------------------------------------------ calls
    def __call__(  # type: ignore[override]
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        **kwargs: Any,
    ) -> Any:
        """The model's forward on the pruned prompt (plain pass-through without images or videos)."""
        visual = self._visual(kwargs)
        if pixel_values is None and visual.get("pixel_values_videos") is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **visual, **kwargs)
        prepared = self.prepare(
            input_ids, pixel_values, attention_mask=attention_mask, position_ids=kwargs.pop("position_ids", None),
            labels=kwargs.pop("labels", None), keep=keep, threshold=threshold, temporal=temporal,
            extra=self._tokens(kwargs), **visual,
        )  # fmt: skip
        return self.model(**prepared.model_kwargs(), **kwargs)

    forward = __call__

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        **kwargs: Any,
    ) -> Any:
        """``model.generate`` on the pruned prompt; returned ids start with the *shortened* prompt.

        Slice new tokens with ``out[:, pruned.last.input_ids.shape[1]:]``.
        """
        visual = self._visual(kwargs)
        if pixel_values is None and visual.get("pixel_values_videos") is None:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **visual, **kwargs)
        prepared = self.prepare(
            input_ids, pixel_values, attention_mask=attention_mask, position_ids=kwargs.pop("position_ids", None),
            keep=keep, threshold=threshold, temporal=temporal, extra=self._tokens(kwargs), **visual,
        )  # fmt: skip
        return self.model.generate(**prepared.generate_kwargs(), **kwargs)


__all__ = ["PrunedQwenVL"]
