"""LLaVA-OneVision glue: NeXT's AnyRes layout plus OneVision's own twists.

OneVision differs from LLaVA-NeXT in three ways that matter for pruning:

* **Multi-image samples** (``batch_num_images`` > 1) skip AnyRes: each image is one base crop
  followed by a single newline. The crop is pruned like any other; the trailing newline stays.
* **``anyres_max_N`` downscaling.** When the unpadded tile grid holds more than about ``N`` crops'
  worth of tokens, the model bilinearly shrinks the *projected* grid before adding row newlines.
  Pruning happens before the projector, so the shrink becomes a *masked* bilinear resampling:
  each output cell averages only the kept tokens among its bilinear sources (weights
  renormalised), and a cell none of whose sources was kept is dropped. Dropped tokens therefore
  never leak into kept ones, and with nothing pruned the result is the model's own interpolation.
  One consequence: a cell survives if *any* source survived, so after downscaling an image can
  keep a larger share of cells than the selector's budget (counts reported are the real ones).
* **Videos** (``pixel_values_videos``, ``(batch, frames, 3, H, W)``): each frame's tokens are
  projected and then pooled 2x2 (``apply_pooling``), and a video's frames are followed by one
  newline. Frames are pruned on that *pooled* grid, what the LLM reads: the selector sees the
  vision features pooled the same way, the LLM gets the model's own projected-and-pooled tokens
  at the kept positions. Per frame (each frame its own budget) or, with ``temporal=True``, across
  frames by novelty; see :mod:`token_reduction.vlm.video`.
* **Multi-image prompts** need nothing special beyond the first point: every image is its own
  crop with its own budget, and images are matched to their placeholder runs in reading order.

Row newlines, base/tile structure and per-crop budgets follow :mod:`token_reduction.vlm.llava_next`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from token_reduction.vlm.common import PrunedVideo
from token_reduction.vlm.llava_next import CropLayout, PrunedLlavaNext, Resize
from token_reduction.vlm.video import pooled_grid, pruned_video, select_frames
from token_reduction.selection.base import Budget


def max_tiles(vision_aspect_ratio: str) -> int:
    """``"anyres_max_9"`` -> 9, with a clear error for anything else."""
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix) or not vision_aspect_ratio[len(prefix) :].isdigit():
        raise ValueError(f"vision_aspect_ratio must look like 'anyres_max_9', got {vision_aspect_ratio!r}")
    return int(vision_aspect_ratio[len(prefix) :])


def masked_bilinear(size: tuple[int, int]) -> Resize:
    """Bilinear resampling of a ``(h, w, D)`` grid to ``size`` that only averages kept cells."""

    def resize(grid: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        channels_first = grid.permute(2, 0, 1).contiguous()[None]
        if bool(mask.all()):
            out = F.interpolate(channels_first, list(size), mode="bilinear")[0]
            return out.permute(1, 2, 0), torch.ones(size, dtype=torch.bool, device=mask.device)
        weights = mask.to(torch.float32)[None, None]
        total = F.interpolate(channels_first.float() * weights, list(size), mode="bilinear")[0]
        norm = F.interpolate(weights, list(size), mode="bilinear")[0, 0]
        kept = norm > 0
        out = (total / norm.clamp_min(torch.finfo(torch.float32).tiny)).to(grid.dtype)
        return out.permute(1, 2, 0), kept

    return resize


class PrunedLlavaOnevision(PrunedLlavaNext):
    """:class:`PrunedLlava` for ``LlavaOnevisionForConditionalGeneration`` (images, multi-image prompts, videos)."""

    family = "llava_onevision"
    family_kwargs = ("batch_num_images",)
    video_kwargs = ("pixel_values_videos", "image_sizes_videos")
    vision_kwargs = ("vision_feature_layer", "vision_feature_select_strategy", "vision_aspect_ratio")
    generate_only_kwargs = ("vision_aspect_ratio",)
    """transformers 5's OneVision ``forward`` does not pass ``vision_aspect_ratio`` to its image
    encoder (the config's applies), its ``generate`` does: the wrapper follows both."""

    def layouts(
        self, image_sizes: Tensor, batch_num_images: Any = None, vision_aspect_ratio: str | None = None, **family: Any
    ) -> list[CropLayout]:
        """NeXT's layout, without tiles for multi-image samples, with ``anyres_max`` downscaling.

        The limit comes from ``vision_aspect_ratio`` (default ``config.vision_aspect_ratio``).
        """
        pinpoints, crop = self.config.image_grid_pinpoints, self.config.vision_config.image_size
        limit = max_tiles(vision_aspect_ratio or self.config.vision_aspect_ratio)
        sizes = [size.tolist() if isinstance(size, Tensor) else list(size) for size in image_sizes]
        if batch_num_images is None:
            tiled = [True] * len(sizes)
        else:
            tiled = [int(n) == 1 for n in batch_num_images for _ in range(int(n))]
            if len(tiled) != len(sizes):
                raise ValueError(f"batch_num_images sums to {len(tiled)} but image_sizes lists {len(sizes)} images")
        layouts = []
        for size, tile in zip(sizes, tiled):
            layout = self.anyres_layout(size, image_size_to_num_patches(size, pinpoints, crop) if tile else 1)
            if layout.tiles is not None:
                r0, r1, c0, c1 = layout.window
                rows, cols = r1 - r0, c1 - c0
                ratio = math.sqrt(rows * cols / (limit * layout.side[0] ** 2))
                if ratio > 1.1:  # the model's own threshold
                    layout.resized = (int(rows // ratio), int(cols // ratio))
                    layout.resize = masked_bilinear(layout.resized)
            layouts.append(layout)
        return layouts

    def encode_videos(
        self,
        keep: Budget | None,
        threshold: float | None,
        temporal: bool,
        pixel_values_videos: Tensor | None = None,
        image_sizes_videos: Any = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
    ) -> list[PrunedVideo]:
        """Frames -> tower -> (pooled features -> selector, projector -> pooling) -> kept tokens per video.

        ``image_sizes_videos`` and ``vision_aspect_ratio`` are accepted and ignored, as by the
        model (frames are resized whole); the layer and strategy of the call apply, as in the model.
        """
        videos = pixel_values_videos
        if videos is None or videos.dim() != 5:
            raise ValueError(f"pixel_values_videos must have shape (batch, frames, 3, H, W), got {None if videos is None else tuple(videos.shape)}")
        batch, frames = videos.shape[:2]
        options = (vision_feature_layer, vision_feature_select_strategy)
        features = self.vision_features(videos.flatten(0, 1), [1] * (batch * frames), *options, modality="video")
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        if features.shape[1] != side * side:
            raise ValueError(f"video pooling needs a {side}x{side} token grid per frame, the tower gives {features.shape[1]} tokens")
        pooled = self.inner.apply_pooling(features)  # what the selector reads: the LLM's grid, vision space
        tokens = self.inner.apply_pooling(self.inner.multi_modal_projector(features))  # what the LLM reads
        grid = pooled_grid(self.config)
        pooled, tokens = pooled.view(batch, frames, *pooled.shape[1:]), tokens.view(batch, frames, *tokens.shape[1:])
        if not temporal:  # every frame of every video is one crop: one selector call
            mask, chosen, _ = select_frames(self.selector, pooled.flatten(0, 1), keep, threshold, grid, False)
            masks, chosen = mask.view(batch, frames, -1), chosen.view(pooled.shape)
        else:
            masks, picks = [], []
            for clip in pooled:
                mask, picked, _ = select_frames(self.selector, clip, keep, threshold, grid, True, self.temporal_options)
                masks.append(mask)
                picks.append(picked)
            masks, chosen = torch.stack(masks), torch.stack(picks)
        merged = (chosen != pooled).any(dim=-1)  # merging methods wrote merged tokens at these positions
        if bool(merged.any()):
            tokens = torch.where(merged[..., None], self.inner.multi_modal_projector(chosen.to(tokens.dtype)), tokens)
        return [pruned_video(tokens[b], masks[b], self.inner.image_newline, temporal) for b in range(batch)]
