"""Calling a selector on a family's visual tokens: checks, one batched call, and grouping by grid.

Family-independent and wrapper-independent, so benchmarks and every family wrapper share one
path to the selector (:mod:`token_reduction.vlm.common` re-exports these names).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from token_reduction.selection.base import Budget, SelectionMethod, resolve_budget


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


def select_per_grid(
    selector: SelectionMethod,
    tokens: list[Tensor],
    grids: list[tuple[int, int]],
    keep: Budget | None,
    threshold: float | None,
    frames: list[int] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Run the selector on items of different sizes: one call per distinct token grid.

    The selector's 2-D positions depend on the grid, so items are grouped by grid (each group one
    batch without padding) rather than padded together; item ``i`` holds ``frames[i]`` crops (1 by
    default). Returns, per item, the keep mask ``(N_i,)`` and its tokens with merged tokens written in.
    """
    frames = frames or [1] * len(tokens)
    masks: list[Tensor] = [torch.empty(0)] * len(tokens)
    chosen: list[Tensor] = [torch.empty(0)] * len(tokens)
    for grid in dict.fromkeys(grids):
        members = [i for i, g in enumerate(grids) if g == grid]
        batch = torch.cat([tokens[i].reshape(frames[i], -1, tokens[i].shape[-1]) for i in members])
        valid = torch.ones(batch.shape[:2], dtype=torch.bool, device=batch.device)
        mask, picked = run_selector(selector, batch, valid, keep, threshold, grid)
        start = 0
        for i in members:
            rows = slice(start, start + frames[i])
            masks[i], chosen[i] = mask[rows].reshape(-1), picked[rows].reshape(tokens[i].shape)
            start += frames[i]
    return masks, chosen
