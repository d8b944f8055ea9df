"""Spatially uniform selection with exact budgets: one token per compact region of the image.

The content-blind baseline that a content-aware method must beat at the same token count.
Raster subsampling is not uniform (``k = cols`` keeps one column) and grid pooling
(:mod:`token_reduction.selection.pooling`) only tiles the image exactly for budgets with a good
factorisation; this method spreads any budget ``1..N`` over any ``rows x cols`` grid.

How: order the tokens along a **generalised Hilbert curve** (the "gilbert" construction of J.
Červený, which covers any rectangle, not only powers of two). The curve is locality-preserving:
any run of consecutive cells on it is a compact blob of the image. Cutting the curve into ``k``
consecutive runs of equal length (``run = rank * k // n``, sizes differ by at most one) therefore
partitions the image into ``k`` compact, equally sized regions, and one token is kept per run:
the one closest to the run's centroid (ties to the earlier one on the curve). So

* the budget is hit exactly (``k`` non-empty runs, one token each), for every ``k <= n``;
* kept tokens are spread over the whole image at every budget (a low-discrepancy property that
  evenly spaced raster positions lack), and sit at region centres rather than on region edges
  (``k = 1`` keeps the image's centre token, ``k = 2`` the centres of its two halves);
* it is deterministic and needs no features.

Padding: the runs are cut among an image's valid tokens only, in curve order, so the budget is
relative to the valid count and padding is never kept. Without ``grid`` the tokens are treated as
one row (the curve is then the sequence itself). On grids with an even major side and an odd minor
side the curve takes one diagonal step; this does not affect coverage or spread.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch
from torch import Tensor

from token_reduction.models.positional import grid_for
from token_reduction.selection.base import Budget, TokenSelection, budgets_per_image, selection_from_mask, valid_counts


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int, out: list[tuple[int, int]]) -> None:
    """Append the cells of the rectangle spanned by major axis ``(ax, ay)`` and minor ``(bx, by)`` from ``(x, y)``."""
    width, height = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if height == 1:
        out.extend((x + i * dax, y + i * day) for i in range(width))
        return
    if width == 1:
        out.extend((x + i * dbx, y + i * dby) for i in range(height))
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    if 2 * width > 3 * height:  # long rectangle: split it in two along the major axis
        if abs(ax2 + ay2) % 2 and width > 2:  # prefer even halves
            ax2, ay2 = ax2 + dax, ay2 + day
        _gilbert(x, y, ax2, ay2, bx, by, out)
        _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by, out)
        return
    if abs(bx2 + by2) % 2 and height > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    # Standard case: up the first half of the minor axis, across, and back down.
    _gilbert(x, y, bx2, by2, ax2, ay2, out)
    _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2, out)
    _gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2), out)


@lru_cache(maxsize=64)
def hilbert_order(rows: int, cols: int) -> Tensor:
    """``(rows*cols,)`` raster positions in generalised-Hilbert-curve order (a permutation)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must have positive sides, got {rows}x{cols}")
    cells: list[tuple[int, int]] = []
    if cols >= rows:
        _gilbert(0, 0, cols, 0, 0, rows, cells)
    else:
        _gilbert(0, 0, 0, rows, cols, 0, cells)
    return torch.tensor([y * cols + x for x, y in cells], dtype=torch.long)


def grid_keep_mask(budgets: Tensor, grid: tuple[int, int], padding_mask: Tensor | None = None) -> Tensor:
    """``(B, N)`` mask with exactly ``budgets[b]`` (capped at the valid count) spatially uniform tokens per image."""
    rows, cols = grid
    batch, num_tokens = budgets.shape[0], rows * cols
    device = budgets.device
    order = hilbert_order(rows, cols).to(device)
    valid = torch.ones(batch, num_tokens, dtype=torch.bool, device=device) if padding_mask is None else ~padding_mask.bool()
    valid = valid[:, order]  # everything below is in curve order
    counts = valid.sum(dim=1, keepdim=True)
    budgets = torch.minimum(budgets.long()[:, None], counts)
    rank = valid.long().cumsum(dim=1) - 1
    sentinel = num_tokens  # padding goes to a spare run that is dropped
    run = torch.where(valid, rank * budgets // counts.clamp(min=1), sentinel)
    # Centroid of each run, on the grid.
    row_of = torch.div(order, cols, rounding_mode="floor").float().expand(batch, -1)
    col_of = (order % cols).float().expand(batch, -1)
    size = torch.zeros(batch, num_tokens + 1, device=device).scatter_add_(1, run, valid.float())
    centre_row = torch.zeros_like(size).scatter_add_(1, run, row_of) / size.clamp(min=1)
    centre_col = torch.zeros_like(size).scatter_add_(1, run, col_of) / size.clamp(min=1)
    distance = (row_of - centre_row.gather(1, run)) ** 2 + (col_of - centre_col.gather(1, run)) ** 2
    inf = torch.full_like(size, float("inf"))
    nearest = inf.scatter_reduce(1, run, distance, reduce="amin", include_self=False)
    candidate = valid & (distance == nearest.gather(1, run))
    step = torch.arange(num_tokens, device=device).expand(batch, -1)
    first = torch.full((batch, num_tokens + 1), num_tokens, dtype=torch.long, device=device)
    first = first.scatter_reduce(1, run, torch.where(candidate, step, num_tokens), reduce="amin", include_self=True)
    chosen = candidate & (step == first.gather(1, run))
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=device)
    mask[:, order] = chosen
    return mask


class GridSelection:
    """Keep exactly the budget of spatially uniform tokens per image (see the module docstring)."""

    name = "grid"
    requires: tuple[str, ...] = ()

    def select(
        self,
        features: Tensor,
        keep: Budget | None = None,
        *,
        padding_mask: Tensor | None = None,
        extras: Mapping[str, Tensor] | None = None,
        grid: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> TokenSelection:
        if keep is None:
            raise ValueError("grid selection has no adaptive mode: pass a budget (count or fraction)")
        num_tokens = features.shape[1]
        image_grid = grid_for(num_tokens, grid) if grid is not None else (1, num_tokens)
        budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
        return selection_from_mask(features, grid_keep_mask(budgets, image_grid, padding_mask))
