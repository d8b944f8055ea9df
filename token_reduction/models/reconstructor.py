"""The Feature Reconstructor: predicts every original token from the kept ones.

Dropped positions arrive as one shared learnable mask embedding (see :class:`MaskedSequence`);
only position codes tell them apart, so the trunk must infer them from kept neighbours. Its
quality at a budget is how the project measures what a selection preserved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from token_reduction.models.backbone import TokenTrunk, TrunkConfig


class MaskedSequence(nn.Module):
    """ONE learnable ``dim``-vector that stands in for every dropped token while training."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.embedding, std=0.02)

    def forward(self, features: Tensor, keep_mask: Tensor) -> Tensor:
        """Blend by the (straight-through) mask, so its gradient reaches the selector."""
        keep = keep_mask[..., None].to(features.dtype)
        return keep * features + (1.0 - keep) * self.embedding.to(features.dtype)


class FeatureReconstructor(nn.Module):
    """``(B, N, D)`` masked sequence -> ``(B, N, D)`` predicted (standardised) features."""

    def __init__(self, dim: int, trunk: TrunkConfig | None = None) -> None:
        super().__init__()
        self.trunk = TokenTrunk(dim, trunk or TrunkConfig())
        self.head = nn.Linear(self.trunk.width, dim)

    def forward(self, masked: Tensor, grid: tuple[int, int] | None = None, padding_mask: Tensor | None = None) -> Tensor:
        return self.head(self.trunk(masked, grid, padding_mask))
