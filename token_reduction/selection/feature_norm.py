"""Feature-norm ranking: keep the tokens with the largest L2 norm.

A training-free saliency proxy: high-norm tokens in ViTs carry global information (Darcet et al.,
"Vision Transformers Need Registers", ICLR 2024, show such tokens aggregate image-level content),
so ranking by norm is a cheap baseline that needs nothing but the features themselves.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from token_reduction.selection.base import Budget, TokenSelection, selection_from_scores


class FeatureNormSelection:
    """Keep the ``keep`` highest-norm tokens per image (ties by position), in original order."""

    name = "norm"
    requires: tuple[str, ...] = ()

    def __init__(self, largest: bool = True) -> None:
        self.largest = largest

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
            raise ValueError("norm selection has no adaptive mode: pass a budget (count or fraction)")
        norms = features.float().norm(dim=-1)
        return selection_from_scores(features, norms if self.largest else -norms, keep, padding_mask)
