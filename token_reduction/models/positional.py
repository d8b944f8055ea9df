"""Fixed 2-D sine-cosine position codes for a token grid.

Fixed (not learned) codes work for any grid size, so one selector serves 24x24 CLIP, 27x27 SigLIP
and the pooled grids of video frames without interpolating a table.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_2d(grid: tuple[int, int], dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(rows * cols, dim)`` position codes, half the channels for rows and half for columns."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos codes need a width divisible by 4, got {dim}")
    rows, cols = grid
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(rows, device=device, dtype=torch.float32),
        torch.arange(cols, device=device, dtype=torch.float32),
        indexing="ij",
    )
    ys = ys.reshape(-1, 1) * freqs
    xs = xs.reshape(-1, 1) * freqs
    return torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1).to(dtype)


def grid_for(num_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The grid to use for ``num_tokens``: the given one, or the square one when it fits."""
    if grid is not None:
        if grid[0] * grid[1] != num_tokens:
            raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} cells but the input has {num_tokens} tokens")
        return (int(grid[0]), int(grid[1]))
    side = int(round(num_tokens**0.5))
    if side * side != num_tokens:
        return (1, num_tokens)
    return (side, side)
