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
* **2x2 pooling** is only used for *video* frames in transformers' implementation. Videos are
  passed through unpruned: ``forward`` encodes them with the model's own ``get_video_features``
  (the model refuses raw video pixels next to pre-computed image features) and ``generate``
  lets transformers encode them at prefill as usual.

Row newlines, base/tile structure and per-crop budgets follow :mod:`token_reduction.llava.next`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from token_reduction.llava.next import CropLayout, PrunedLlavaNext, Resize


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
    """:class:`PrunedLlava` for ``LlavaOnevisionForConditionalGeneration`` (images; videos pass through)."""

    family = "llava_onevision"
    family_kwargs = ("batch_num_images",)

    def layouts(self, image_sizes: Tensor, batch_num_images: Any = None, **family: Any) -> list[CropLayout]:
        """NeXT's layout, without tiles for multi-image samples, with ``anyres_max`` downscaling.

        The limit comes from ``config.vision_aspect_ratio``, as in the model's own forward.
        """
        pinpoints, crop = self.config.image_grid_pinpoints, self.config.vision_config.image_size
        limit = max_tiles(self.config.vision_aspect_ratio)
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

    def encode_other_modalities(self, kwargs: dict[str, Any], encoder_outputs: dict[str, Any]) -> None:
        """Encode videos unpruned, since ``forward`` rejects raw video pixels next to encoder outputs."""
        videos = kwargs.pop("pixel_values_videos", None)
        kwargs.pop("image_sizes_videos", None)
        if videos is not None:
            encoder_outputs["video"] = self.inner.get_video_features(videos, return_dict=True)
