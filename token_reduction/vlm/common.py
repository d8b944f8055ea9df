"""Family-independent machinery for feeding LLaVA fewer visual tokens.

The pipeline for one call is the same for LLaVA-NeXT and LLaVA-OneVision:

1. run the vision tower on every crop (base image + AnyRes tiles) and take the selected-layer
   features after ``vision_feature_select_strategy``: exactly the tokens the projector would see;
2. ask the selector which of them to keep, per crop (tokens that AnyRes unpadding would discard
   anyway are passed as ``padding_mask`` so the budget is spent on real image content);
3. project only the kept tokens and lay them out as the model would (base tokens, then the tiles'
   rows with one ``image_newline`` per row that still holds a token);
4. shorten each image's run of ``<image>`` placeholders to its kept count, re-pad the batch and
   hand the result to the unmodified model through ``mm_encoder_outputs``, which transformers'
   ``forward`` and ``generate`` both accept (``generate`` uses it for the prefill step only).

Nothing in the wrapped model is patched. This module holds what does not depend on the family:
calling the selector, rebuilding the token sequence and the :class:`PrunedLlava` wrapper.
``next.py`` encodes images over LLaVA-NeXT's AnyRes geometry; ``onevision.py`` adds OneVision's
differences, including videos (frames pruned on the pooled grid the LLM reads, per frame or across
frames; see :mod:`token_reduction.vlm.video`). Videos follow the same steps with their own
``<video>`` placeholders and ``mm_encoder_outputs["video"]``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from token_reduction.selection.base import Budget, SelectionMethod, resolve_budget

UNSET: Any = object()
"""Sentinel for per-call arguments: "use the value given to :func:`prune_visual_tokens`"."""

# --------------------------------------------------------------------------------- the selector
def check_selector(selector: Any, feature_dim: int, where: str) -> None:
    """Fail early, naming both dims, when a selector cannot read this tower's features."""
    if not callable(getattr(selector, "select", None)):
        raise TypeError(f"selector must implement SelectionMethod.select(features, keep, ...), got {type(selector).__name__}")
    dim = getattr(selector, "dim", None)
    if dim is not None and int(dim) != feature_dim:
        raise ValueError(
            f"selector expects {dim}-dim features but {where} produces {feature_dim}-dim features; "
            "it was trained for another vision encoder (or another vision_feature_layer)"
        )
    missing = tuple(getattr(selector, "requires", ()) or ())
    if missing:
        raise ValueError(
            f"selection method '{getattr(selector, 'name', type(selector).__name__)}' needs encoder extras {missing}, "
            "which the LLaVA wrapper does not compute; use a method that only reads features"
        )


def accepts_threshold(selector: Any) -> bool:
    try:
        params = inspect.signature(selector.select).parameters
    except (TypeError, ValueError):
        return False
    return "threshold" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def validate_keep(keep: Budget | None) -> Budget | None:
    """``keep`` unchanged, or the same ``ValueError`` the selection helpers would raise later."""
    if keep is not None:
        resolve_budget(keep, 1)
    return keep


def run_selector(
    selector: SelectionMethod,
    features: Tensor,
    valid: Tensor,
    keep: Budget | None,
    threshold: float | None = None,
    grid: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Keep mask ``(C, N)`` and features (merged tokens written at their representative positions).

    Crops without a single valid token are not shown to the selector at all.
    """
    check_selector(selector, features.shape[-1], "the vision tower")
    num_crops, num_tokens, _ = features.shape
    mask = torch.zeros(num_crops, num_tokens, dtype=torch.bool, device=features.device)
    rows = valid.any(dim=1)
    if not bool(rows.any()):
        return mask, features
    params = next(iter(selector.parameters()), None) if isinstance(selector, nn.Module) else None
    inputs = features[rows]
    if params is not None:
        inputs = inputs.to(device=params.device, dtype=params.dtype)
    padding = ~valid[rows]
    kwargs: dict[str, Any] = {"padding_mask": padding.to(inputs.device) if bool(padding.any()) else None, "grid": grid}
    if threshold is not None:
        if not accepts_threshold(selector):
            raise ValueError(f"selector '{getattr(selector, 'name', type(selector).__name__)}' has no threshold; pass keep= instead")
        kwargs["threshold"] = threshold
    selection = selector.select(inputs, keep, **kwargs)
    if selection.indices.shape[0] != inputs.shape[0]:
        raise ValueError(f"selector returned {selection.indices.shape[0]} selections for {inputs.shape[0]} crops")
    # Index only valid slots: padding slots point at position 0 and must not overwrite it.
    slots = selection.valid.to(features.device)
    crop_ids = rows.nonzero().squeeze(1)
    crop_of_slot = crop_ids[:, None].expand_as(slots)[slots]
    positions = selection.indices.to(features.device)[slots]
    mask[crop_of_slot, positions] = True
    mask &= valid
    if selection.merged:
        features = features.clone()
        features[crop_of_slot, positions] = selection.tokens.to(features)[slots]
    return mask, features


# ------------------------------------------------------------------------------ the LLM sequence
@dataclass
class PrunedImage:
    """What one image contributes to the LLM: ``features`` ``(after, D)`` replacing ``before`` placeholders."""

    features: Tensor
    before: int

    @property
    def after(self) -> int:
        return int(self.features.shape[0])


@dataclass
class PrunedVideo(PrunedImage):
    """What one video contributes: its frames' kept tokens then its trailing newline(s).

    ``frames_before``/``frames_after`` count each frame's visual tokens without and with pruning;
    ``before``/``after`` add the ``newlines`` the model appends after the last frame.
    """

    frames_before: list[int] = field(default_factory=list)
    frames_after: list[int] = field(default_factory=list)
    newlines: int = 1
    temporal: bool = False


@dataclass
class PrunedInputs:
    """Model inputs after pruning, plus per-image token counts for reporting."""

    input_ids: Tensor
    attention_mask: Tensor
    images: list[PrunedImage]
    position_ids: Tensor | None = None
    labels: Tensor | None = None
    mm_encoder_outputs: dict[str, Any] = field(default_factory=dict)
    videos: list[PrunedVideo] = field(default_factory=list)

    @property
    def tokens_before(self) -> list[int]:
        """Visual positions per *image* without pruning (videos: :attr:`video_tokens_before`)."""
        return [image.before for image in self.images]

    @property
    def tokens_after(self) -> list[int]:
        return [image.after for image in self.images]

    @property
    def video_tokens_before(self) -> list[int]:
        """Visual positions per video without pruning (every frame plus the trailing newline)."""
        return [video.before for video in self.videos]

    @property
    def video_tokens_after(self) -> list[int]:
        return [video.after for video in self.videos]

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "mm_encoder_outputs": self.mm_encoder_outputs}
        optional = {"position_ids": self.position_ids, "labels": self.labels}
        return kwargs | {name: value for name, value in optional.items() if value is not None}


def infer_padding_side(attention_mask: Tensor, default: str) -> str:
    """``"left"`` or ``"right"`` as the tokenizer padded this batch; ``default`` when nothing is padded."""
    padded = ~attention_mask.bool()
    if bool(padded[:, 0].any()):
        return "left"
    if bool(padded[:, -1].any()):
        return "right"
    return default


def drop_placeholders(
    input_ids: Tensor, real: Tensor, keep: Tensor, token_id: int, items: list[PrunedImage], what: str = "image"
) -> None:
    """Clear ``keep`` on the placeholders of ``token_id`` that ``items`` (in reading order) dropped.

    Each item's run keeps its first ``after`` placeholders; the tokens are scattered in order, so
    which placeholders of a run survive does not matter, only how many.
    """
    item = 0
    for row in range(input_ids.shape[0]):
        slots = ((input_ids[row] == token_id) & real[row]).nonzero().squeeze(1).tolist()
        start = 0
        while start < len(slots):
            if item >= len(items):
                raise ValueError(f"input_ids hold more <{what}> placeholders than the {len(items)} {what}s need")
            before, after = items[item].before, items[item].after
            if start + before > len(slots):
                raise ValueError(
                    f"{what} {item} needs {before} placeholders but row {row} has only {len(slots) - start} left; "
                    "was the prompt expanded by a processor configured for this model?"
                )
            keep[row, slots[start + after : start + before]] = False
            start, item = start + before, item + 1
    if item != len(items):
        raise ValueError(f"{len(items)} {what}s were encoded but input_ids hold placeholders for {item}")


def shorten_placeholders(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    image_token_id: int,
    images: list[PrunedImage],
    *,
    pad_token_id: int,
    padding_side: str | None = None,
    position_ids: Tensor | None = None,
    labels: Tensor | None = None,
    videos: list[PrunedVideo] | None = None,
    video_token_id: int | None = None,
) -> PrunedInputs:
    """Cut each image's (and video's) placeholder run to its kept length and re-pad the batch.

    Images are matched to placeholders in reading order, as ``masked_scatter`` does; videos are
    matched to ``video_token_id`` placeholders the same way. Caller-given ``position_ids`` keep
    their values for surviving tokens minus the number of tokens dropped before them, so positions
    stay contiguous; without them, positions are rebuilt from the new attention mask when the batch
    is padded (the rule ``generate`` uses).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    side = padding_side or infer_padding_side(attention_mask, "left")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    videos = list(videos or [])
    real = attention_mask.bool()
    keep = real.clone()
    drop_placeholders(input_ids, real, keep, image_token_id, images, "image")
    if videos or video_token_id is not None:
        if video_token_id is None:
            raise ValueError("videos were encoded but no video_token_id was given")
        drop_placeholders(input_ids, real, keep, video_token_id, videos, "video")
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    arange = torch.arange(width, device=input_ids.device)
    offset = (width - lengths)[:, None] if side == "left" else torch.zeros_like(lengths)[:, None]
    new_mask = (arange[None] >= offset) & (arange[None] < offset + lengths[:, None])

    def rebuild(values: Tensor, fill: int) -> Tensor:
        out = values.new_full((values.shape[0], width), fill)
        out[new_mask] = values[keep]
        return out

    new_positions = None
    if position_ids is not None:
        dropped_before = (real & ~keep).long().cumsum(dim=1)
        new_positions = rebuild(position_ids - dropped_before, 0)
    elif not bool(new_mask.all()):
        new_positions = (new_mask.long().cumsum(dim=1) - 1).masked_fill(~new_mask, 0)
    return PrunedInputs(
        input_ids=rebuild(input_ids, pad_token_id),
        attention_mask=new_mask.to(attention_mask.dtype),
        images=images,
        position_ids=new_positions,
        labels=rebuild(labels, -100) if labels is not None else None,
        mm_encoder_outputs=encoder_outputs(images, videos),
        videos=videos,
    )


def encoder_outputs(images: list[PrunedImage], videos: list[PrunedVideo]) -> dict[str, Any]:
    """``mm_encoder_outputs`` for the model: images as a list (one tensor each), videos concatenated.

    The model concatenates image tensors and flattens the video output's first two dims before
    scattering them into the placeholders, so one ``(1, sum(after), D)`` tensor serves any number
    of videos with different kept counts.
    """
    outputs: dict[str, Any] = {}
    if images:
        outputs["image"] = BaseModelOutputWithPooling(pooler_output=[i.features for i in images])
    if videos:
        outputs["video"] = BaseModelOutputWithPooling(pooler_output=torch.cat([v.features for v in videos])[None])
    return outputs


# ---------------------------------------------------------------------------------- the wrapper
class PrunedLlava:
    """A LLaVA model whose visual context passes through a token selector before the projector.

    Call it like the model (``pruned(**inputs)``, ``pruned.generate(**inputs)``) with the
    processor's outputs; ``keep=`` and ``threshold=`` override the defaults per call. The model
    itself is left untouched. ``last`` holds the :class:`PrunedInputs` of the latest call, whose
    ``tokens_before``/``tokens_after`` say how many visual positions each image had and kept
    (``videos`` hold the same per video and per frame).
    Subclasses implement :meth:`encode_images` for their family (see ``next.py``, ``onevision.py``)
    and, for families with video input, :meth:`encode_videos` (``temporal=`` picks per-frame or
    across-frame selection, per wrapper or per call).
    """

    family = "llava"
    family_kwargs: tuple[str, ...] = ()
    """Processor outputs that only the image encoding reads (e.g. OneVision's ``batch_num_images``)."""
    video_kwargs: tuple[str, ...] = ()
    """Processor outputs that carry videos, pruned by :meth:`encode_videos` (OneVision: ``pixel_values_videos``)."""

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
        if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
            raise RuntimeError(
                f"{type(model).__name__}.forward has no `mm_encoder_outputs` argument; "
                "visual token pruning needs transformers >= 5 (LLaVA-NeXT / LLaVA-OneVision)"
            )
        self.model = model
        self.inner = model.model
        self.selector = selector
        self.keep = validate_keep(keep)
        self.threshold = threshold
        self.padding_side = padding_side
        self.temporal = bool(temporal)
        """Videos: select across frames (:class:`~token_reduction.selection.temporal.TemporalSelection`) instead of per frame."""
        self.temporal_options: dict[str, Any] = dict(temporal_options or {})
        """Keyword arguments of ``TemporalSelection`` (``fusion``, ``min_per_frame``, ``uniform_share``)."""
        layer = self.config.vision_feature_layer
        check_selector(selector, self.feature_dim, f"the {self.family} vision tower (vision_feature_layer={layer})")
        if isinstance(selector, nn.Module):
            selector.to(self.device).eval()
        self.last: PrunedInputs | None = None

    # ------------------------------------------------------------------------------ properties
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def feature_dim(self) -> int:
        """Dim of the features the projector reads (selected layers concatenated)."""
        layer = self.config.vision_feature_layer
        return self.config.vision_config.hidden_size * (1 if isinstance(layer, int) else len(layer))

    # ------------------------------------------------------------------------------ family hook
    def encode_images(
        self, pixel_values: Tensor, image_sizes: Tensor, keep: Budget | None, threshold: float | None, **family: Any
    ) -> list[PrunedImage]:
        """Pruned, projected, laid-out visual tokens of each image, in placeholder order."""
        raise NotImplementedError

    def encode_videos(self, keep: Budget | None, threshold: float | None, temporal: bool, **video: Any) -> list[PrunedVideo]:
        """Pruned, projected, laid-out visual tokens of each video, in placeholder order."""
        raise NotImplementedError(f"{type(self).__name__} does not prune videos")

    def has_videos(self, family: dict[str, Any]) -> bool:
        """Whether ``family`` (split processor outputs) carries video pixels."""
        return bool(self.video_kwargs) and family.get(self.video_kwargs[0]) is not None

    def encode_other_modalities(self, kwargs: dict[str, Any], encoder_outputs: dict[str, Any]) -> None:
        """Forward-only hook: encode non-image inputs the model cannot take next to ``mm_encoder_outputs``."""

    def prepare(
        self,
        input_ids: Tensor,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        padding_side: str | None = None,
        **family: Any,
    ) -> PrunedInputs:
        """Encode and prune the images and videos, then shorten the text to match (no LLM call)."""
        if input_ids is None:
            raise ValueError("pruning needs input_ids (to find the <image> placeholders), not inputs_embeds")
        keep = self.keep if keep is UNSET else validate_keep(keep)
        threshold = self.threshold if threshold is UNSET else threshold
        temporal = self.temporal if temporal is UNSET else bool(temporal)
        video = {name: family.pop(name) for name in self.video_kwargs if name in family}
        if pixel_values is None and not self.has_videos(video):
            raise ValueError("nothing to prune: pass pixel_values (images) or video pixels")
        images = self.encode_images(pixel_values, image_sizes, keep, threshold, **family) if pixel_values is not None else []
        videos = self.encode_videos(keep, threshold, temporal, **video) if self.has_videos(video) else []
        prepared = shorten_placeholders(
            input_ids,
            attention_mask,
            self.config.image_token_id,
            images,
            pad_token_id=self.pad_token_id(),
            padding_side=padding_side or self.padding_side,
            position_ids=position_ids,
            labels=labels,
            videos=videos,
            video_token_id=getattr(self.config, "video_token_id", None) if videos else None,
        )
        self.last = prepared
        return prepared

    def pad_token_id(self) -> int:
        """Any id works under a zero attention mask; prefer the model's own pad id for readable outputs."""
        config = self.model.generation_config
        eos = config.eos_token_id[0] if isinstance(config.eos_token_id, (list, tuple)) else config.eos_token_id
        found = (config.pad_token_id, self.config.get_text_config().pad_token_id, eos)
        return next((int(c) for c in found if c is not None), 0)

    def _split(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {name: kwargs.pop(name) for name in self.family_kwargs + self.video_kwargs if name in kwargs}

    # ------------------------------------------------------------------------------------ calls
    def __call__(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        **kwargs: Any,
    ) -> Any:
        """The model's forward on the pruned sequence (plain pass-through without images or videos)."""
        family = self._split(kwargs)
        if pixel_values is None and not self.has_videos(family):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, image_sizes=image_sizes, **kwargs)
        positions, labels = kwargs.pop("position_ids", None), kwargs.pop("labels", None)
        prepared = self.prepare(
            input_ids, pixel_values, image_sizes, attention_mask,
            position_ids=positions, labels=labels, keep=keep, threshold=threshold, temporal=temporal, **family,
        )  # fmt: skip
        self.encode_other_modalities(kwargs, prepared.mm_encoder_outputs)
        return self.model(**prepared.model_kwargs(), **kwargs)

    forward = __call__

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        keep: Budget | None = UNSET,
        threshold: float | None = UNSET,
        temporal: bool = UNSET,
        **kwargs: Any,
    ) -> Any:
        """``model.generate`` on the pruned prompt; returned ids start with the *shortened* prompt.

        Slice new tokens with ``out[:, pruned.last.input_ids.shape[1]:]``.
        """
        family = self._split(kwargs)
        if pixel_values is None and not self.has_videos(family):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        prepared = self.prepare(
            input_ids, pixel_values, image_sizes, attention_mask, keep=keep, threshold=threshold, temporal=temporal, **family
        )
        return self.model.generate(
            input_ids=prepared.input_ids,
            attention_mask=prepared.attention_mask,
            mm_encoder_outputs=prepared.mm_encoder_outputs,
            **kwargs,
        )
