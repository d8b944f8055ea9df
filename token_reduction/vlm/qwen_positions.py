"""Qwen's multimodal RoPE through pruning: kept tokens keep the positions the unpruned model gives them.

Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 place every token with three rotary position ids
``(t, h, w)``: text advances all three together; the merged visual tokens of an image get their
own row and column in ``h`` and ``w`` (``get_rope_index``), and the text after an image continues
from ``max(rows, cols)`` past the image start, not from the number of image tokens. Layout lives
in the positions, so pruning must not renumber them:

* the unpruned ``(3, B, L)`` positions are the ones the unpatched model would use for this very
  call (:func:`unpruned_positions`) and each surviving slot keeps its own: a kept visual token
  keeps its ``(t, h, w)``, text after the image keeps its unpruned position, so the sequence is
  shorter but the position of everything in it is unchanged;
* ``generate`` gets ``(4, B, L')`` positions, row 0 the text positions it would build from the
  attention mask (used for the causal mask only) and rows 1-3 the kept 3-D positions; generation
  then continues from the last prompt position + 1, exactly as for the unpruned prompt;
* the model's ``rope_deltas`` (``position - sequence index`` after the prompt, its own state for
  decoding steps without ``position_ids``) is set to the pruned prompt's value, which exceeds the
  unpruned one by the number of dropped tokens.

Placeholders are matched to visual tokens in reading order, as ``masked_scatter`` does, so which
placeholder slot survives follows the keep mask (unlike LLaVA, where only counts matter): the
wrapper hands :func:`~token_reduction.vlm.sequence.shorten_placeholders` the slots to drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from token_reduction.errors import UserError
from token_reduction.vlm.common import PrunedImage, PrunedInputs, PrunedVideo


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

    When something was dropped, ``position_ids`` is ``(3, B, L')``: the unpruned ``(t, h, w)``
    positions of the surviving slots, and ``kept`` ``(B, L)`` marks the attended survivors in the
    caller's (unpruned) sequence. When nothing was dropped the caller's tensors go to the model
    untouched, with ``passthrough`` (the grids): the model then computes its positions itself.
    """

    text_position_ids: Tensor | None = None
    rope_deltas: Tensor | None = None
    kept: Tensor | None = None
    passthrough: dict[str, Any] = field(default_factory=dict)
    """Processor outputs the model needs to place an *unpruned* prompt itself (``image_grid_thw``...)."""

    @classmethod
    def extend(cls, prepared: PrunedInputs, **qwen: Any) -> QwenPrunedInputs:
        """``prepared`` (from ``shorten_placeholders``) with the Qwen fields set."""
        return cls(**{f.name: getattr(prepared, f.name) for f in fields(PrunedInputs)}, **qwen)

    def model_kwargs(self) -> dict[str, Any]:
        return super().model_kwargs() | (self.passthrough if self.dropped == 0 else {})

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``model.generate(...)``; after pruning, 4-row positions as ``generate`` builds them.

        (``model_kwargs()`` gives the 3-row positions ``forward`` computes for itself.)
        """
        kwargs = self.model_kwargs()
        kwargs.pop("labels", None)
        kwargs.pop("shift_labels", None)
        if self.dropped:
            kwargs["position_ids"] = torch.cat([self.text_position_ids[None], self.position_ids])
        return kwargs


def spatial_positions(position_ids: Tensor) -> Tensor:
    """Caller-given ``position_ids`` as ``(3, B, L)``, following the model's own reading of them."""
    if position_ids.dim() == 2:
        return position_ids[None].expand(3, -1, -1)
    if position_ids.dim() == 3 and position_ids.shape[0] == 4:
        return position_ids[1:]
    if position_ids.dim() == 3 and position_ids.shape[0] == 3:
        return position_ids
    raise UserError("qwen_vl", "position_ids", f"has shape {tuple(position_ids.shape)}; pass (B, L), (3, B, L) or (4, B, L)")


def mask_positions(attention_mask: Tensor) -> Tensor:
    """``(B, L)`` text positions from the attention mask, as ``generate`` builds them (0 under padding)."""
    return (attention_mask.long().cumsum(dim=1) - 1).masked_fill(attention_mask == 0, 0)


def dropped_slots(slots: Tensor, keep: Tensor, what: str) -> Tensor:
    """``(B, L)`` True on the placeholders (``slots``) whose visual token is not kept.

    ``keep`` concatenates the keep masks of this modality's items in reading order over the whole
    batch (row-major), which is how ``masked_scatter`` assigns tokens to placeholders; every
    placeholder counts, masked or not, as the model's ``get_placeholder_mask`` finds them.
    """
    found = int(slots.sum())
    if found != keep.numel():
        raise UserError(
            "qwen_vl", "input_ids",
            f"hold {found} {what} placeholders but the {what}s give {keep.numel()} tokens; "
            "expand the prompt with this model's processor (one placeholder per merged token)",
        )  # fmt: skip
    dropped = torch.zeros_like(slots)
    dropped[slots] = ~keep.to(slots.device)
    return dropped


def unpruned_positions(
    inner: Any,
    input_ids: Tensor | None,
    attention_mask: Tensor,
    slots: Tensor,
    position_ids: Tensor | None,
    mm_token_type_ids: Tensor | None,
    **grids: Any,
) -> Tensor:
    """``(3, B, L)`` positions the unpatched model uses for this prompt.

    The caller's; else 3-D ones from the model's ``get_rope_index`` when the model can build them
    (``input_ids``, ``mm_token_type_ids`` and a grid given); else the model's own fallback, text
    positions in all three rows (without ``input_ids`` or token types it has no 3-D positions either).
    """
    if position_ids is not None:
        return spatial_positions(position_ids)
    given = {name: value for name, value in grids.items() if value is not None}
    if input_ids is None or mm_token_type_ids is None or not given:
        return mask_positions(attention_mask)[None].expand(3, -1, -1)
    masked = int((slots & (attention_mask == 0)).sum())
    if masked:
        raise UserError(
            "qwen_vl", "attention_mask",
            f"is 0 on {masked} visual placeholders, which get_rope_index cannot place (the model itself fails); "
            "unmask them or pass position_ids",
        )  # fmt: skip
    positions, _ = inner.get_rope_index(input_ids, mm_token_type_ids=mm_token_type_ids, attention_mask=attention_mask, **given)
    return positions


def rope_deltas(positions: Tensor, attention_mask: Tensor) -> Tensor:
    """``(B, 1)`` offsets ``generate`` adds to text positions after the prompt: last position + 1 - length."""
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    last = positions.masked_fill(~real[None], torch.iinfo(positions.dtype).min).amax(dim=(0, 2))
    return torch.where(lengths > 0, last + 1 - lengths, torch.zeros_like(lengths))[:, None]


__all__ = [
    "QwenImage",
    "QwenPrunedInputs",
    "QwenVideo",
    "dropped_slots",
    "mask_positions",
    "rope_deltas",
    "spatial_positions",
    "unpruned_positions",
]
