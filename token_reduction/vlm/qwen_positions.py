"""Qwen's multimodal RoPE through pruning: kept tokens keep the positions the unpruned model gives them.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 place every token with three rotary position ids
``(t, h, w)``: text advances all three together; the merged visual tokens of an image get their
own row and column in ``h`` and ``w`` (``get_rope_index``), and the text after an image continues
from ``max(rows, cols)`` past the image start, not from the number of image tokens. Layout lives
in the positions, so pruning must not renumber them:

* the unpruned ``(3, B, L)`` positions are computed once (the model's own ``get_rope_index`` on
  the unpruned ``input_ids``) and indexed with the mask of surviving sequence slots: a kept visual
  token keeps its ``(t, h, w)``, text after the image keeps its unpruned position, so the
  sequence is shorter but the position of everything in it is unchanged;
* ``generate`` gets ``(4, B, L')`` positions, row 0 the text positions it would build from the
  attention mask (used for the causal mask only) and rows 1-3 the kept 3-D positions; generation
  then continues from the last prompt position + 1, exactly as for the unpruned prompt;
* the model's ``rope_deltas`` (``position - sequence index`` after the prompt, its own state for
  decoding steps without ``position_ids``) is set to the pruned prompt's value, which exceeds the
  unpruned one by the number of dropped tokens.

Placeholders are matched to visual tokens in reading order, as ``masked_scatter`` does, so which
placeholder slot survives follows the keep mask (unlike LLaVA, where only counts matter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from token_reduction.errors import UserError
from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedVideo, infer_padding_side


@dataclass
class QwenImage(PrunedImage):
    """One image's kept merged tokens; ``mask`` ``(before,)`` marks them in the unpruned raster order."""

    mask: Tensor | None = None
    grid: tuple[int, int, int] = (1, 0, 0)
    """``(t, rows, cols)`` of merged tokens, as the LLM reads them."""
    deepstack: list[Tensor] | None = None
    """Qwen3-VL: the kept tokens' deepstack features, one ``(after, D)`` tensor per deepstack layer."""


@dataclass
class QwenVideo(PrunedVideo):
    """One video's kept merged tokens, frame by frame (``newlines`` is 0: Qwen has no trailing token)."""

    mask: Tensor | None = None
    grid: tuple[int, int, int] = (1, 0, 0)
    deepstack: list[Tensor] | None = None


@dataclass
class QwenPrunedInputs(PrunedInputs):
    """:class:`PrunedInputs` plus what Qwen's multimodal RoPE needs.

    ``position_ids`` is ``(3, B, L')``: the unpruned ``(t, h, w)`` positions of the surviving
    slots. ``kept`` ``(B, L)`` marks those slots in the caller's (unpruned) sequence.
    """

    text_position_ids: Tensor | None = None
    rope_deltas: Tensor | None = None
    kept: Tensor | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``model.generate(...)``: 4-row positions, as ``generate`` builds them.

        (``model_kwargs()`` gives the 3-row positions ``forward`` computes for itself.)
        """
        kwargs = self.model_kwargs()
        kwargs.pop("labels", None)
        kwargs["position_ids"] = torch.cat([self.text_position_ids[None], self.position_ids])
        return kwargs


def modality_types(input_ids: Tensor, image_token_id: int, video_token_id: int | None) -> Tensor:
    """``mm_token_type_ids`` as Qwen processors build them: 0 text, 1 image, 2 video placeholder."""
    types = (input_ids == image_token_id).int()
    if video_token_id is not None:
        types = types.masked_fill(input_ids == video_token_id, 2)
    return types


def spatial_positions(position_ids: Tensor) -> Tensor:
    """Caller-given ``position_ids`` as ``(3, B, L)``, following the model's own reading of them."""
    if position_ids.dim() == 2:
        return position_ids[None].expand(3, -1, -1)
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[1:]
    if position_ids.dim() == 3 and position_ids.shape[0] == 3:
        return position_ids
    raise UserError("qwen_vl", "position_ids", f"has shape {tuple(position_ids.shape)}; pass (B, L), (3, B, L) or (4, B, L)")


def keep_slots(input_ids: Tensor, attention_mask: Tensor, kept: dict[int, tuple[Tensor, str]]) -> Tensor:
    """``(B, L)`` True on slots that survive: real tokens minus the dropped placeholders.

    ``kept`` maps a placeholder id to the concatenated keep masks of that modality's items, in
    reading order over the whole batch (row-major), which is how ``masked_scatter`` assigns them.
    """
    keep = attention_mask.bool().clone()
    for token_id, (mask, what) in kept.items():
        slots = input_ids == token_id  # as the model's get_placeholder_mask finds them, whatever the mask
        found = int(slots.sum())
        if found != mask.numel():
            raise UserError(
                "qwen_vl", "input_ids",
                f"hold {found} {what} placeholders but the {what}s give {mask.numel()} tokens; "
                "expand the prompt with this model's processor (one placeholder per merged token)",
            )  # fmt: skip
        keep[slots] &= mask.to(keep.device)
    return keep


def compact(
    keep: Tensor,
    attention_mask: Tensor,
    positions: Tensor,
    *,
    input_ids: Tensor,
    pad_token_id: int,
    padding_side: str | None,
    mm_token_type_ids: Tensor | None = None,
    labels: Tensor | None = None,
    extra: dict[str, Tensor] | None = None,
    images: list[PrunedImage] | None = None,
    videos: list[PrunedVideo] | None = None,
    mm_encoder_outputs: dict[str, Any] | None = None,
) -> QwenPrunedInputs:
    """The surviving slots of every row, re-padded, with their unpruned 3-D positions.

    Padding goes on the side the caller padded (left when nothing is padded: what batched
    ``generate`` needs). Padded slots get position 0, as ``get_rope_index`` gives them. ``extra``
    per-token tensors (``token_type_ids``...) follow the tokens; ``shift_labels`` (each slot holds
    the *next* token's label) is re-targeted so a slot before a dropped run points past it.
    """
    side = padding_side or infer_padding_side(attention_mask, "left")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    arange = torch.arange(width, device=keep.device)
    offset = (width - lengths)[:, None] if side == "left" else torch.zeros_like(lengths)[:, None]
    new_mask = (arange[None] >= offset) & (arange[None] < offset + lengths[:, None])

    def rebuild(values: Tensor, fill: int) -> Tensor:
        out = values.new_full((values.shape[0], width), fill)
        out[new_mask] = values[keep]
        return out

    new_positions = torch.stack([rebuild(row, 0) for row in positions.to(keep.device)])
    real_positions = positions.to(keep.device).masked_fill(~keep[None], torch.iinfo(positions.dtype).min)
    last = real_positions.amax(dim=(0, 2))
    rope_deltas = torch.where(lengths > 0, last + 1 - lengths, torch.zeros_like(lengths))[:, None]
    text_positions = (new_mask.long().cumsum(dim=1) - 1).masked_fill(~new_mask, 0)
    tokens = {"mm_token_type_ids": rebuild(mm_token_type_ids, 0)} if mm_token_type_ids is not None else {}
    for name, values in (extra or {}).items():
        if name == "shift_labels":
            own = torch.cat([values.new_full((values.shape[0], 1), -100), values[:, :-1]], dim=1)  # each slot's own label
            tokens[name] = torch.cat([rebuild(own, -100)[:, 1:], rebuild(values, -100)[:, -1:]], dim=1)
        else:
            tokens[name] = rebuild(values, -100 if "labels" in name else 0)
    return QwenPrunedInputs(
        input_ids=rebuild(input_ids, pad_token_id),
        attention_mask=new_mask.to(attention_mask.dtype),
        images=list(images or []),
        position_ids=new_positions,
        labels=rebuild(labels, -100) if labels is not None else None,
        mm_encoder_outputs=dict(mm_encoder_outputs or {}),
        videos=list(videos or []),
        extra=tokens,
        dropped=int((attention_mask.bool() & ~keep).sum()),
        text_position_ids=text_positions,
        rope_deltas=rope_deltas,
        kept=keep,
    )


__all__ = ["QwenImage", "QwenPrunedInputs", "QwenVideo", "compact", "keep_slots", "modality_types", "spatial_positions"]
