"""Helpers for families whose images differ in size or hold layout tokens between placeholders.

* :func:`shorten_dropped` is :func:`token_reduction.vlm.sequence.shorten_placeholders` with the
  dropped positions decided by the caller. The shared function drops the tail of each image's
  placeholder run, which is right when the run is contiguous; Mistral3's image spans interleave
  ``[IMG]`` rows with ``[IMG_BREAK]`` separators, so which ``[IMG]`` go (and which separators follow
  them) must be decided position by position. Candidate for ``sequence.py``: a ``dropped=``
  argument to ``shorten_placeholders`` that skips its ``mark_dropped`` step would replace it.
* :func:`select_per_grid` runs a selector over images of different token grids.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from token_reduction.vlm.common import run_selector
from token_reduction.vlm.sequence import SHIFTED, TOKEN_FILL, PrunedImage, PrunedInputs, encoder_outputs, infer_padding_side


def shorten_dropped(
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    dropped: Tensor,
    slots: Tensor,
    images: list[PrunedImage],
    *,
    pad_token_id: int,
    padding_side: str | None = None,
    position_ids: Tensor | None = None,
    labels: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    embed: Callable[[int], Tensor] | None = None,
    extra: dict[str, Tensor] | None = None,
    fields: dict[str, dict[str, Any]] | None = None,
) -> PrunedInputs:
    """Remove the ``dropped`` ``(B, L)`` positions and re-pad, exactly as ``shorten_placeholders`` does.

    ``slots`` marks the image spans (placeholders and their layout tokens), which stay in place even
    where the caller's mask is 0. Nothing dropped: the caller's own tensors come back untouched.
    """
    reference = input_ids if input_ids is not None else inputs_embeds
    batch, length = reference.shape[:2]
    device = reference.device
    mask = attention_mask if attention_mask is not None else torch.ones(batch, length, dtype=torch.long, device=device)
    side = padding_side or infer_padding_side(mask, "left")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    extra = dict(extra or {})
    outputs = encoder_outputs(images, [], fields)
    count = int(dropped.sum())
    if count == 0:
        return PrunedInputs(input_ids, mask, images, position_ids, labels, outputs, [], inputs_embeds, extra, dropped=0)

    content = (mask.bool() | slots).long()
    edge = (content.cumsum(1) == 0) if side == "left" else (content.flip(1).cumsum(1).flip(1) == 0)
    keep = ~edge & ~dropped
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    arange = torch.arange(width, device=device)
    offset = (width - lengths)[:, None] if side == "left" else torch.zeros_like(lengths)[:, None]
    place = (arange[None] >= offset) & (arange[None] < offset + lengths[:, None])

    def rebuild(values: Tensor, fill: Any) -> Tensor:
        if isinstance(fill, Tensor):
            out = fill.expand(batch, width, -1).clone()
        else:
            out = values.new_full((batch, width, *values.shape[2:]), fill)
        out[place] = values[keep]
        return out

    new_mask = rebuild(mask, 0)
    if position_ids is not None:
        lead = position_ids.dim() - 2
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
        if name in SHIFTED:  # next-token labels: compact the per-token labels they encode, then shift again
            per_token = torch.cat([torch.full_like(values[:, :1], fill), values[:, :-1]], dim=1)
            new_extra[name] = torch.cat([rebuild(per_token, fill)[:, 1:], rebuild(values, fill)[:, -1:]], dim=1)
        else:
            new_extra[name] = rebuild(values, fill)
    pad_embedding = None
    if inputs_embeds is not None:
        pad_embedding = (
            embed(pad_token_id).to(inputs_embeds) if embed is not None else inputs_embeds.new_zeros(inputs_embeds.shape[-1])
        )
    return PrunedInputs(
        input_ids=rebuild(input_ids, pad_token_id) if input_ids is not None else None,
        attention_mask=new_mask,
        images=images,
        position_ids=new_positions,
        labels=rebuild(labels, TOKEN_FILL["labels"]) if labels is not None else None,
        mm_encoder_outputs=outputs,
        inputs_embeds=rebuild(inputs_embeds, pad_embedding) if inputs_embeds is not None else None,
        extra=new_extra,
        dropped=count,
    )


def select_per_grid(
    selector: Any,
    tokens: list[Tensor],
    grids: list[tuple[int, int]],
    keep: Any,
    threshold: float | None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Run the selector on images of different sizes: one call per distinct token grid.

    The selector's 2-D positions depend on the grid, so images are grouped by grid (each group is
    one batch without padding) rather than padded together. Returns, per image, the keep mask
    ``(N_i,)`` and its tokens with any merged tokens written at their representative positions.
    """
    masks: list[Tensor] = [torch.empty(0)] * len(tokens)
    chosen: list[Tensor] = [torch.empty(0)] * len(tokens)
    for grid in dict.fromkeys(grids):
        members = [i for i, g in enumerate(grids) if g == grid]
        batch = torch.stack([tokens[i] for i in members])
        valid = torch.ones(batch.shape[:2], dtype=torch.bool, device=batch.device)
        mask, picked = run_selector(selector, batch, valid, keep, threshold, grid)
        for row, i in enumerate(members):
            masks[i], chosen[i] = mask[row], picked[row]
    return masks, chosen
