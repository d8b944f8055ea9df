"""Uniformly random selection: the floor every learned or heuristic method has to beat.

The paper ("When Less is Enough", arXiv 2503.16660) compares its selector against random
dropping at the same budget; a method that cannot beat it has learned nothing about the image.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from token_reduction.selection.base import (
    Budget,
    TokenSelection,
    budgets_per_image,
    selection_from_mask,
    top_k_mask,
    valid_counts,
)


def random_keep_mask(
    features: Tensor, keep: Budget, padding_mask: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """``(B, N)`` mask with exactly the budget of uniformly random non-padding tokens per image.

    Scores are drawn on the CPU so a seeded CPU generator gives the same mask on any device.
    """
    budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
    scores = torch.rand(features.shape[:2], generator=generator).to(features.device)
    return top_k_mask(scores, budgets, padding_mask)


class RandomSelection:
    """Keep a uniformly random subset of exactly the budget per image, in original order.

    Reproducible: pass a ``generator`` per call, or rely on the instance's own generator seeded
    with ``seed`` (successive calls then draw fresh, but repeatable, masks).
    """

    name = "random"
    requires: tuple[str, ...] = ()

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

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
            raise ValueError("random selection has no adaptive mode: pass a budget (count or fraction)")
        mask = random_keep_mask(features, keep, padding_mask, generator or self._generator)
        return selection_from_mask(features, mask)
