"""The Transformer trunk shared by the selector and the reconstructor (plain PyTorch, no Lightning)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from token_reduction.models.positional import grid_for, sincos_2d


@dataclass
class TrunkConfig:
    """Size of a token Transformer.

    Attributes:
        width: internal width; ``None`` uses the feature dim (paper-faithful). A narrower width makes
            the selector cheap next to the vision tower.
        depth: number of Transformer encoder layers.
        heads: attention heads (must divide ``width``).
        mlp_ratio: hidden size of each MLP as a multiple of ``width``.
        dropout: dropout inside the layers.
    """

    width: int | None = None
    depth: int = 3
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0


class TokenTrunk(nn.Module):
    """LayerNorm'd input projection + 2-D position codes + pre-norm Transformer encoder layers."""

    def __init__(self, dim: int, config: TrunkConfig) -> None:
        super().__init__()
        width = config.width or dim
        if width % config.heads:
            raise ValueError(f"width {width} is not divisible by heads {config.heads}")
        if width % 4:
            raise ValueError(f"width {width} must be divisible by 4 for 2-D position codes")
        self.width = width
        self.proj_in = nn.Linear(dim, width)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=config.heads,
            dim_feedforward=int(width * config.mlp_ratio),
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers=config.depth, enable_nested_tensor=False)
        self.norm_out = nn.LayerNorm(width)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, N, dim)`` -> ``(B, N, width)``; ``padding_mask`` True marks positions to ignore."""
        grid = grid_for(x.shape[1], grid)
        h = self.proj_in(x) + sincos_2d(grid, self.width, device=x.device, dtype=x.dtype)
        h = self.layers(h, src_key_padding_mask=padding_mask)
        return self.norm_out(h)


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation with statistics measured on the training cache.

    Encoder features carry a few huge-magnitude channels; standardising makes the losses and the
    selector see every channel on the same scale. Buffers travel with checkpoints and exports.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, mean: Tensor, std: Tensor) -> None:
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"statistics of shape {tuple(mean.shape)} do not fit feature dim {self.mean.shape[0]}")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
