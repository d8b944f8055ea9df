"""Attention ranking: keep the tokens the encoder itself attends to most ("dominant" tokens).

The score is the ``"attention"`` extra stored at extraction: the [CLS] token's attention to each
patch for CLIP, or the mean attention each token receives for SigLIP (which has no [CLS]). This is
the dominant-token criterion of VisionZip (Yang et al., "VisionZip: Longer is Better but Not
Necessary in Vision Language Models", arXiv 2412.04467) without its contextual merging.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from token_reduction.selection.base import Budget, TokenSelection, selection_from_scores


class MissingExtraError(ValueError):
    """A method needs an encoder side output that the feature cache does not hold."""


EXTRA_HINTS = {
    "attention": "re-extract the cache with `token-reduction extract ... --store-attention`",
}


def require_extra(extras: Mapping[str, Tensor] | None, name: str, method: str, features: Tensor) -> Tensor:
    """The ``(B, N)`` extra ``name``, or an error that tells the user how to get it."""
    if extras is None or name not in extras:
        hint = EXTRA_HINTS.get(name, f"re-extract the cache with the '{name}' extra")
        raise MissingExtraError(f"method '{method}' needs the '{name}' extra, which the feature cache does not hold; {hint}")
    value = extras[name]
    if tuple(value.shape) != tuple(features.shape[:2]):
        raise ValueError(f"extra '{name}' has shape {tuple(value.shape)}, expected {tuple(features.shape[:2])} (batch, tokens)")
    return value


class AttentionSelection:
    """Keep the ``keep`` tokens with the highest stored attention score, in original order."""

    name = "attention"
    requires: tuple[str, ...] = ("attention",)

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
        scores = require_extra(extras, "attention", self.name, features)
        if keep is None:
            raise ValueError("attention selection has no adaptive mode: pass a budget (count or fraction)")
        return selection_from_scores(features, scores, keep, padding_mask)
