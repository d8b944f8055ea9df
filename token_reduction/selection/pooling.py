"""Spatial pooling to a coarser grid: the standard fixed-budget reduction of VLMs.

LLaVA-OneVision (Li et al., "LLaVA-OneVision: Easy Visual Task Transfer", arXiv 2408.03326) and
LLaVA-NeXT-Video bilinearly/average pool the vision grid to cut tokens; this baseline does the
same with exact budgets, so it can be compared with learned selection token for token.

How a budget ``k`` becomes a grid, for an input grid ``R x C``:

1. **Exact grid.** Among ``r x c`` with ``r * c == k``, ``r <= R``, ``c <= C``, take the one whose
   aspect ratio is closest to ``R / C``; accept it when that ratio is within a factor
   ``max_aspect_change`` (2 by default) of the input's, so ``k = 23`` on ``24 x 24`` does not
   become a ``1 x 23`` strip.
2. **Otherwise the ceil grid.** The smallest aspect-preserving ``r x c`` with ``r * c >= k``, of
   which ``k`` cells are kept, evenly spaced in raster order (``round(linspace(0, r*c-1, k))``).
   Tokens of the other cells are discarded, not merged.

Cells partition the grid without overlap (row edges ``floor(i * R / r)``, same for columns), so
every token lands in exactly one cell. A cell's *representative position* is its centre token
(lower-middle for even sizes). Images with padding pool their valid tokens as the full grid when
they fill it, else as a ``1 x n`` sequence in original order.

Modes: ``"average"`` (default) emits each cell's mean, a merged token; ``"subsample"`` keeps each
cell's centre token unchanged (uniform spatial subsampling).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping

import torch
from torch import Tensor

from token_reduction.models.positional import grid_for
from token_reduction.selection.base import Budget, TokenSelection, budgets_per_image, selection_from_mask, valid_counts
from token_reduction.selection.merging import selection_from_assignment, valid_positions

MODES = ("average", "subsample")


def exact_grid(budget: int, rows: int, cols: int, max_aspect_change: float = 2.0) -> tuple[int, int] | None:
    """The ``r x c == budget`` grid closest in aspect to ``rows x cols``, or ``None`` if none is close enough."""
    target = math.log(rows / cols)
    best: tuple[float, tuple[int, int]] | None = None
    for r in range(1, min(rows, budget) + 1):
        if budget % r or budget // r > cols:
            continue
        c = budget // r
        distance = abs(math.log(r / c) - target)
        if best is None or distance < best[0]:
            best = (distance, (r, c))
    if best is None or best[0] > math.log(max_aspect_change) + 1e-9:
        return None
    return best[1]


def ceil_grid(budget: int, rows: int, cols: int) -> tuple[int, int]:
    """The smallest roughly aspect-preserving grid with at least ``budget`` cells."""
    r = min(rows, max(1, math.ceil(math.sqrt(budget * rows / cols))))
    c = min(cols, math.ceil(budget / r))
    while r * c < budget:  # c hit the column limit: add rows
        r = min(rows, r + 1)
        c = min(cols, math.ceil(budget / r))
    return r, c


@lru_cache(maxsize=256)
def pooling_plan(budget: int, rows: int, cols: int, max_aspect_change: float = 2.0) -> tuple[Tensor, Tensor]:
    """``(assignment, representatives)`` for pooling a ``rows x cols`` raster to exactly ``budget`` cells.

    ``assignment`` ``(rows*cols,)`` gives each token's output slot (``-1`` if its cell was dropped);
    ``representatives`` ``(budget,)`` the ascending centre position of each kept cell.
    """
    if not 1 <= budget <= rows * cols:
        raise ValueError(f"cannot pool a {rows}x{cols} grid to {budget} tokens")
    out_rows, out_cols = exact_grid(budget, rows, cols, max_aspect_change) or ceil_grid(budget, rows, cols)
    row_edges = [(i * rows) // out_rows for i in range(out_rows + 1)]
    col_edges = [(j * cols) // out_cols for j in range(out_cols + 1)]
    row_of = torch.bucketize(torch.arange(rows), torch.tensor(row_edges[1:]), right=True)
    col_of = torch.bucketize(torch.arange(cols), torch.tensor(col_edges[1:]), right=True)
    cell = (row_of[:, None] * out_cols + col_of[None, :]).flatten()
    centre_rows = torch.tensor([(row_edges[i] + row_edges[i + 1] - 1) // 2 for i in range(out_rows)])
    centre_cols = torch.tensor([(col_edges[j] + col_edges[j + 1] - 1) // 2 for j in range(out_cols)])
    centres = (centre_rows[:, None] * cols + centre_cols[None, :]).flatten()
    num_cells = out_rows * out_cols
    kept_cells = torch.linspace(0, num_cells - 1, budget).round().long() if budget > 1 else torch.tensor([num_cells // 2])
    slot_of_cell = torch.full((num_cells,), -1, dtype=torch.long)
    slot_of_cell[kept_cells] = torch.arange(budget)
    return slot_of_cell[cell], centres[kept_cells]


class PoolingSelection:
    """Average-pool (merged tokens) or subsample the token grid to exactly the budget per image."""

    name = "pooling"
    requires: tuple[str, ...] = ()

    def __init__(self, mode: str = "average", max_aspect_change: float = 2.0) -> None:
        if mode not in MODES:
            raise ValueError(f"pooling mode must be one of {MODES}, got {mode!r}")
        if max_aspect_change < 1.0:
            raise ValueError(f"max_aspect_change must be >= 1, got {max_aspect_change}")
        self.mode = mode
        self.max_aspect_change = float(max_aspect_change)

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
            raise ValueError("pooling has no adaptive mode: pass a budget (count or fraction)")
        batch, num_tokens, _ = features.shape
        rows, cols = grid_for(num_tokens, grid)
        budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
        assignment = torch.full((batch, num_tokens), -1, dtype=torch.long, device=features.device)
        representatives = []
        for b, positions in enumerate(valid_positions(padding_mask, batch, num_tokens, features.device)):
            n = positions.numel()
            if n == 0:  # an all-padding image keeps nothing
                representatives.append(positions)
                continue
            image_grid = (rows, cols) if n == rows * cols else (1, n)
            slots, centres = pooling_plan(int(budgets[b]), *image_grid, self.max_aspect_change)
            assignment[b, positions] = slots.to(features.device)
            representatives.append(positions[centres.to(features.device)])
        if self.mode == "subsample":
            mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=features.device)
            for b, reps in enumerate(representatives):
                mask[b, reps] = True
            return selection_from_mask(features, mask)
        return selection_from_assignment(features, assignment, representatives)
