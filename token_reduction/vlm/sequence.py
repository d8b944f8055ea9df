"""The LLM side of pruning: shortening each image's placeholder run and re-padding the batch.

Family-independent. Placeholders are found as transformers finds them (``get_placeholder_mask``):
every ``input_ids == token_id`` slot whatever the attention mask, or, without ``input_ids``, every
``inputs_embeds`` row equal to the embedding of the token. When no placeholder is dropped the
inputs come back untouched (the same tensors), so ``keep=1.0`` feeds the model exactly what the
caller gave it; otherwise the surviving tokens of each row are packed and re-padded on the side
the caller padded, and every per-token tensor (attention mask, labels, ``shift_labels``, positions,
embeddings, token types) follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

TOKEN_FILL: dict[str, int] = {"labels": -100, "shift_labels": -100}
"""Value of a per-token tensor on new padding slots (0 when not listed)."""
SHIFTED = ("shift_labels",)
"""Per-token tensors that hold the *next* token's value: compacted as the labels they encode, so
``shift_labels`` after pruning are exactly the shifted pruned ``labels`` (the loss is the same)."""


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
    """Model inputs after pruning, plus per-image token counts for reporting.

    ``input_ids`` is ``None`` when the caller gave only ``inputs_embeds``; ``extra`` holds the other
    per-token tensors the caller gave (``shift_labels``, ``token_type_ids``...), compacted alike.
    """

    input_ids: Tensor | None
    attention_mask: Tensor
    images: list[PrunedImage]
    position_ids: Tensor | None = None
    labels: Tensor | None = None
    mm_encoder_outputs: dict[str, Any] = field(default_factory=dict)
    videos: list[PrunedVideo] = field(default_factory=list)
    inputs_embeds: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    dropped: int = 0
    """Placeholders removed from the whole batch (0: the caller's tensors were passed on unchanged)."""

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

    @property
    def lengths(self) -> list[int]:
        """Attended tokens per row of the pruned batch (what each row costs the LLM)."""
        return [int(n) for n in self.attention_mask.sum(dim=1)]

    def model_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"attention_mask": self.attention_mask, "mm_encoder_outputs": self.mm_encoder_outputs}
        optional = {
            "input_ids": self.input_ids, "inputs_embeds": self.inputs_embeds,
            "position_ids": self.position_ids, "labels": self.labels,
        }  # fmt: skip
        return kwargs | {name: value for name, value in optional.items() if value is not None} | self.extra


def infer_padding_side(attention_mask: Tensor, default: str) -> str:
    """``"left"`` or ``"right"`` as the tokenizer padded this batch; ``default`` when nothing is padded."""
    padded = ~attention_mask.bool()
    if bool(padded[:, 0].any()):
        return "left"
    if bool(padded[:, -1].any()):
        return "right"
    return default


def placeholder_slots(
    input_ids: Tensor | None, inputs_embeds: Tensor | None, token_id: int, embed: Callable[[int], Tensor] | None = None
) -> Tensor:
    """``(B, L)`` True on ``token_id`` placeholders, found as the model's ``get_placeholder_mask`` does."""
    if input_ids is not None:
        return input_ids == token_id
    if inputs_embeds is None or embed is None:
        raise ValueError("finding placeholders needs input_ids, or inputs_embeds and the model's input embeddings")
    return (inputs_embeds == embed(token_id).to(inputs_embeds)).all(dim=-1)


def mark_dropped(slots: Tensor, dropped: Tensor, items: list[PrunedImage], what: str = "image") -> None:
    """Set ``dropped`` on the placeholders (``slots``) that ``items`` (in reading order) no longer fill.

    Each item's run keeps its first ``after`` placeholders; the tokens are scattered in order, so
    which placeholders of a run survive does not matter, only how many.
    """
    item = 0
    for row in range(slots.shape[0]):
        found = slots[row].nonzero().squeeze(1).tolist()
        start = 0
        while start < len(found):
            if item >= len(items):
                raise ValueError(f"input_ids hold more <{what}> placeholders than the {len(items)} {what}s need")
            before, after = items[item].before, items[item].after
            if start + before > len(found):
                raise ValueError(
                    f"{what} {item} needs {before} placeholders but row {row} has only {len(found) - start} left; "
                    "was the prompt expanded by a processor configured for this model?"
                )
            dropped[row, found[start + after : start + before]] = True
            start, item = start + before, item + 1
    if item != len(items):
        raise ValueError(f"{len(items)} {what}s were encoded but input_ids hold placeholders for {item}")


def drop_placeholders(
    input_ids: Tensor, real: Tensor, keep: Tensor, token_id: int, items: list[PrunedImage], what: str = "image"
) -> None:
    """Clear ``keep`` on the placeholders of ``token_id`` among ``real`` slots that ``items`` dropped (kept for callers)."""
    dropped = torch.zeros_like(keep)
    mark_dropped((input_ids == token_id) & real, dropped, items, what)
    keep &= ~dropped


def shifted_to_tokens(values: Tensor, fill: int) -> Tensor:
    """``shift_labels`` (slot ``t`` holds token ``t+1``'s label) as per-token labels (slot ``t`` holds token ``t``'s)."""
    return torch.cat([torch.full_like(values[:, :1], fill), values[:, :-1]], dim=1)


def shorten_placeholders(
    input_ids: Tensor | None,
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
    inputs_embeds: Tensor | None = None,
    embed: Callable[[int], Tensor] | None = None,
    extra: dict[str, Tensor] | None = None,
    fields: dict[str, dict[str, Any]] | None = None,
    dropped: Tensor | None = None,
    layout: Tensor | None = None,
) -> PrunedInputs:
    """Cut each image's (and video's) placeholder run to its kept length and re-pad the batch.

    Images are matched to placeholders in reading order, as ``masked_scatter`` does; videos to
    ``video_token_id`` placeholders the same way. ``embed(token_id)`` (the model's input embedding)
    finds placeholders in ``inputs_embeds`` when there are no ``input_ids``. Caller-given
    ``position_ids`` ((B, L) or (k, B, L)) keep their values for surviving tokens minus the tokens
    dropped before them; without them, positions are rebuilt from the new attention mask when the
    pruned batch is padded (the rule ``generate`` uses). Tokens the caller masked out inside a row
    stay (masked); only the padding at the padding side is re-laid. ``fields`` go to
    :func:`encoder_outputs`. ``dropped`` ``(B, L)``: the positions to remove, decided by the caller
    (for families whose placeholder runs interleave layout tokens) instead of by matching items to runs;
    ``layout`` ``(B, L)``: those layout tokens, which stay in place like placeholders even where masked.
    """
    reference = input_ids if input_ids is not None else inputs_embeds
    if reference is None:
        raise ValueError("pass input_ids or inputs_embeds")
    batch, length = reference.shape[:2]
    device = reference.device
    mask = attention_mask if attention_mask is not None else torch.ones(batch, length, dtype=torch.long, device=device)
    side = padding_side or infer_padding_side(mask, "left")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    videos, extra = list(videos or []), dict(extra or {})
    slots = placeholder_slots(input_ids, inputs_embeds, image_token_id, embed)
    decided = dropped is not None
    dropped = dropped.to(device=device, dtype=torch.bool) if decided else torch.zeros(batch, length, dtype=torch.bool, device=device)
    if not decided:
        mark_dropped(slots, dropped, images, "image")
    if videos or video_token_id is not None:
        if video_token_id is None:
            raise ValueError("videos were encoded but no video_token_id was given")
        video_slots = placeholder_slots(input_ids, inputs_embeds, video_token_id, embed)
        if not decided:
            mark_dropped(video_slots, dropped, videos, "video")
        slots = slots | video_slots
    if layout is not None:
        slots = slots | layout.to(device=device, dtype=torch.bool)
    outputs = encoder_outputs(images, videos, fields)
    count = int(dropped.sum())
    if count == 0:  # keep=1.0: the caller's own tensors, untouched
        return PrunedInputs(
            input_ids, mask, images, position_ids, labels, outputs, videos, inputs_embeds, extra, dropped=0,
        )  # fmt: skip

    # Padding on the padding side is re-laid; masked tokens inside a row (and placeholders anywhere) stay.
    content = (mask.bool() | slots).long()
    edge = (content.cumsum(1) == 0) if side == "left" else (content.flip(1).cumsum(1).flip(1) == 0)
    keep = ~edge & ~dropped
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    arange = torch.arange(width, device=device)
    offset = (width - lengths)[:, None] if side == "left" else torch.zeros_like(lengths)[:, None]
    place = (arange[None] >= offset) & (arange[None] < offset + lengths[:, None])

    def rebuild(values: Tensor, fill: Any) -> Tensor:
        """``values`` (B, L, ...) laid out as the pruned batch; new slots hold ``fill`` (a value or a vector)."""
        if isinstance(fill, Tensor):
            out = fill.expand(batch, width, -1).clone()
        else:
            out = values.new_full((batch, width, *values.shape[2:]), fill)
        out[place] = values[keep]
        return out

    new_mask = rebuild(mask, 0)
    if position_ids is not None:
        lead = position_ids.dim() - 2  # (k, B, L) positions: batch and length are the last two dims
        shifted = position_ids - dropped.long().cumsum(dim=1).to(position_ids.device)
        moved = shifted.movedim(tuple(range(lead)), tuple(range(2, 2 + lead))) if lead else shifted
        new_positions = rebuild(moved, 0)
        new_positions = new_positions.movedim(tuple(range(2, 2 + lead)), tuple(range(lead))) if lead else new_positions
    elif not bool(new_mask.bool().all()):
        new_positions = (new_mask.long().cumsum(dim=1) - 1).masked_fill(new_mask == 0, 0)
    else:
        new_positions = None
    new_extra = {}
    for name, values in extra.items():
        fill = TOKEN_FILL.get(name, 0)
        if name in SHIFTED:  # compact the labels they encode, then shift again: dropped runs are skipped
            labels_of = rebuild(shifted_to_tokens(values, fill), fill)
            new_extra[name] = torch.cat([labels_of[:, 1:], rebuild(values, fill)[:, -1:]], dim=1)
        else:
            new_extra[name] = rebuild(values, fill)
    pad_embedding = None
    if inputs_embeds is not None:
        pad_embedding = embed(pad_token_id).to(inputs_embeds) if embed is not None else inputs_embeds.new_zeros(inputs_embeds.shape[-1])
    return PrunedInputs(
        input_ids=rebuild(input_ids, pad_token_id) if input_ids is not None else None,
        attention_mask=new_mask,
        images=images,
        position_ids=new_positions,
        labels=rebuild(labels, TOKEN_FILL["labels"]) if labels is not None else None,
        mm_encoder_outputs=outputs,
        videos=videos,
        inputs_embeds=rebuild(inputs_embeds, pad_embedding) if inputs_embeds is not None else None,
        extra=new_extra,
        dropped=count,
    )


def encoder_outputs(
    images: list[PrunedImage], videos: list[PrunedVideo], fields: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``mm_encoder_outputs`` for the model: images as a list (one tensor each), videos as one tensor.

    ``fields[modality]`` adds the vision tower's own outputs (``last_hidden_state``,
    ``hidden_states``, ``attentions``), so ``image_outputs``/``video_outputs`` carry what the
    unpatched model returns; ``pooler_output`` is what the LLM read (the kept tokens).
    Videos that kept the same count are stacked ``(videos, after, D)``, the model's own shape;
    otherwise each token is its own ``(1, D)`` entry, ``(sum(after), 1, D)``: the model flattens the
    first two dims either way, and ``generate`` (which repeats entries per row for beams or several
    return sequences by matching cumulative lengths) then still pairs every row with its own video.
    """
    fields = fields or {}
    outputs: dict[str, Any] = {}
    if images:
        outputs["image"] = BaseModelOutputWithPooling(pooler_output=[i.features for i in images], **fields.get("image", {}))
    if videos:
        counts = {video.after for video in videos}
        joined = torch.cat([video.features for video in videos])
        pooled = joined.view(len(videos), -1, joined.shape[-1]) if len(counts) == 1 else joined[:, None]
        outputs["video"] = BaseModelOutputWithPooling(pooler_output=pooled, **fields.get("video", {}))
    return outputs


__all__ = [
    "PrunedImage",
    "PrunedInputs",
    "PrunedVideo",
    "drop_placeholders",
    "encoder_outputs",
    "infer_padding_side",
    "mark_dropped",
    "placeholder_slots",
    "shifted_to_tokens",
    "shorten_placeholders",
]
