"""Videos through the pruning wrapper: per-frame or temporal selection on the LLM's own frame grid.

LLaVA-OneVision feeds a video as its frames: every frame goes through the vision tower like an
image crop, its tokens are projected and then **pooled 2x2** (``apply_pooling``: bilinear
resampling of the ``side x side`` grid to ``ceil(side/2) x ceil(side/2)``, e.g. 27x27 -> 14x14
= 196 tokens for SigLIP-384), and all frames' tokens follow one another in time order, with a
single ``image_newline`` after the last frame.

Pruning happens on that pooled grid, i.e. on exactly the tokens the LLM would read:

* the selector reads the *vision* features pooled the same way (``apply_pooling`` on the
  pre-projector features: the selector's input space), on the pooled grid;
* the LLM receives the model's own projected-then-pooled tokens at the kept positions, so
  ``keep=1.0`` reproduces the unpatched model exactly (merging methods feed their merged pooled
  vision features through the projector instead, which is close but not identical);
* kept tokens stay in frame order and raster order within a frame; the trailing newline is
  structure and always stays; a frame may lose all its tokens when its budget is 0.

Two modes, chosen per wrapper (``temporal=``) or per call (``pruned.generate(..., temporal=True)``):

* **per frame** (default): every frame is one crop with its own budget (``keep`` per frame);
* **temporal**: :class:`~token_reduction.selection.temporal.TemporalSelection` spends the same
  total (``keep`` per frame, summed over the clip) across frames by novelty: a token repeating
  what its position showed in the previous kept frame is dropped first, static frames get fewer
  tokens, frame 0 keeps the base selector's choice.

This module also holds what the chat command needs to build video prompts and inputs; the processor
loader that works without torchvision is :mod:`token_reduction.vlm.processors`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from token_reduction.vlm.common import PrunedVideo, accepts_threshold, run_selector
from token_reduction.selection.base import Budget, SelectionMethod
from token_reduction.selection.temporal import TemporalSelection


# ------------------------------------------------------------------------------ the frame grid
def pooled_grid(config: Any) -> tuple[int, int]:
    """``(rows, cols)`` of one video frame after OneVision's 2x2 pooling."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return (math.ceil(side / 2), math.ceil(side / 2))


def tokens_per_frame(config: Any) -> int:
    """Visual tokens one video frame gives the LLM (before pruning)."""
    rows, cols = pooled_grid(config)
    return rows * cols


def video_placeholders(config: Any, num_frames: int) -> int:
    """``<video>`` placeholders the unpruned model needs for ``num_frames`` frames (+1 newline)."""
    return num_frames * tokens_per_frame(config) + 1


# ------------------------------------------------------------------------------- selection
def select_frames(
    selector: SelectionMethod,
    frames: Tensor,
    keep: Budget | None,
    threshold: float | None,
    grid: tuple[int, int],
    temporal: bool,
    temporal_options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keep mask ``(T, P)``, features (merged tokens written in) and, in temporal mode, frame budgets.

    ``frames`` ``(T, P, D)`` are one clip's pooled vision features.
    """
    valid = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)
    if not temporal:
        mask, features = run_selector(selector, frames, valid, keep, threshold, grid)
        return mask, features, None
    if threshold is not None and not accepts_threshold(selector):
        raise ValueError(f"selector '{getattr(selector, 'name', type(selector).__name__)}' has no threshold; pass keep= instead")
    method = TemporalSelection(selector, **(temporal_options or {}))
    mask, features = run_selector(method, frames, valid, keep, threshold, grid)
    return mask, features, method.last_budgets


def pack_video(tokens: Tensor, keep: Tensor, newline: Tensor) -> tuple[Tensor, list[int]]:
    """Kept tokens of ``tokens`` ``(T, P, D)`` in frame then raster order, then the newline."""
    kept = tokens[keep]
    packed = torch.cat([kept, newline.to(kept)[None]])
    return packed, [int(n) for n in keep.sum(dim=1)]


def pruned_video(tokens: Tensor, keep: Tensor, newline: Tensor, temporal: bool) -> PrunedVideo:
    """A :class:`PrunedVideo` from one clip's LLM-space tokens ``(T, P, D)`` and its keep mask."""
    packed, after = pack_video(tokens, keep, newline)
    frames, per_frame = tokens.shape[:2]
    return PrunedVideo(
        features=packed, before=frames * per_frame + 1, frames_before=[per_frame] * frames,
        frames_after=after, newlines=1, temporal=temporal,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ wrapping
def prune_video_tokens(
    model: Any,
    selector: SelectionMethod,
    keep: Budget | None = None,
    threshold: float | None = None,
    *,
    temporal: bool = False,
    padding_side: str | None = None,
    **temporal_options: Any,
) -> Any:
    """:func:`~token_reduction.vlm.prune_visual_tokens` with video settings.

    ``temporal=True`` selects across frames; ``temporal_options`` go to
    :class:`~token_reduction.selection.temporal.TemporalSelection` (``fusion``,
    ``min_per_frame``, ``uniform_share``). Images are pruned as usual.
    """
    from token_reduction.vlm import prune_visual_tokens

    pruned = prune_visual_tokens(model, selector, keep=keep, threshold=threshold, padding_side=padding_side)
    if temporal_options:
        TemporalSelection(selector, **temporal_options)  # validate now, not at the first video
    pruned.temporal = bool(temporal)
    pruned.temporal_options = dict(temporal_options)
    return pruned


# ---------------------------------------------------------------------------- prompts, inputs
def build_video_prompt(processor: Any, text: str, num_videos: int = 1, num_images: int = 0) -> str:
    """A user turn with ``num_images`` images then ``num_videos`` videos, templated when possible."""
    image_token = getattr(processor, "image_token", "<image>")
    video_token = getattr(processor, "video_token", "<video>")
    if getattr(processor, "chat_template", None):
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(num_images)]
        content += [{"type": "video"} for _ in range(num_videos)]
        content.append({"type": "text", "text": text.replace(image_token, "").replace(video_token, "").strip()})
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    prefix = f"{image_token}\n" * max(num_images - text.count(image_token), 0)
    prefix += f"{video_token}\n" * max(num_videos - text.count(video_token), 0)
    return prefix + text


def has_video_processor(processor: Any) -> bool:
    return getattr(processor, "video_processor", None) is not None


def frames_to_pixels(processor: Any, frames: Sequence[Any]) -> Tensor:
    """``(T, 3, H, W)`` frames prepared like OneVision's video processor, through its image processor.

    Fallback when the video processor is unavailable (it needs torchvision): each frame alone
    gives the image processor's *base crop*, the whole frame resized to the crop size, rescaled and
    normalised, which is what the video processor does to a frame (same size, mean and std).
    """
    image_processor = processor.image_processor
    crops = []
    for frame in frames:
        pixels = image_processor(images=[frame], return_tensors="pt")["pixel_values"]
        crops.append(pixels[0, 0] if pixels.dim() == 5 else pixels[0])
    return torch.stack(crops)


def video_inputs(
    processor: Any,
    frames: Sequence[Any],
    text: str,
    images: Sequence[Any] | None = None,
    frame_tokens: int | None = None,
) -> dict[str, Tensor]:
    """Model inputs for one prompt about one video (and optional images), as tensors.

    With a video processor this is ``processor(videos=[frames], images=..., text=...)``. Without
    one (no torchvision), frames go through :func:`frames_to_pixels` and the ``<video>`` marker is
    expanded here to ``len(frames) * frame_tokens + 1`` placeholders; images cannot be mixed in then.
    """
    if has_video_processor(processor):
        kwargs: dict[str, Any] = {"videos": [list(frames)], "text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = [list(images)]
        return dict(processor(**kwargs))
    if images:
        raise ValueError("images next to a video need the model's video processor (pip install torchvision)")
    if frame_tokens is None:
        side = math.isqrt(int(processor.num_image_tokens))
        frame_tokens = math.ceil(side / 2) ** 2
    token = getattr(processor, "video_token", "<video>")
    if text.count(token) != 1:
        raise ValueError(f"the prompt must hold exactly one {token} marker, found {text.count(token)}")
    expanded = text.replace(token, token * (len(frames) * frame_tokens + 1))
    encoded = dict(processor.tokenizer([expanded], return_tensors="pt"))
    encoded["pixel_values_videos"] = frames_to_pixels(processor, frames)[None]
    return encoded
