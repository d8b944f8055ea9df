"""VisionZip: dominant tokens by attention plus a few contextual tokens merged from the rest.

Method: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models",
CVPR 2025 (arXiv 2412.04467). Of a budget ``k``:

* ``round(k * dominant_ratio)`` (at least 1) **dominant** tokens are the highest-attention tokens
  (the ``"attention"`` extra: [CLS] attention for CLIP, mean received attention for SigLIP); they
  pass through unchanged. The paper's default split is 54 dominant + 10 contextual of 64, which
  is the default ratio here.
* The remaining ``k - dominant`` **contextual** tokens: target tokens are taken evenly spaced (in
  position order) among the non-dominant tokens; every other non-dominant token is merged into its
  most cosine-similar target, and each contextual token is the plain mean of its group.

When the whole budget is dominant (``k = 1``, say) the non-dominant tokens are discarded.
Representative positions: a dominant token's own position, a contextual group's target position.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from token_reduction.selection.attention import require_extra
from token_reduction.selection.base import Budget, TokenSelection, budgets_per_image, valid_counts
from token_reduction.selection.merging import cosine_matrix, selection_from_assignment, valid_positions

DEFAULT_DOMINANT_RATIO = 54 / 64


def visionzip_groups(tokens: Tensor, attention: Tensor, budget: int, dominant_ratio: float) -> tuple[Tensor, Tensor]:
    """``(assignment (n,), representatives (budget,))`` over one image's ``(n, D)`` valid tokens."""
    n = tokens.shape[0]
    device = tokens.device
    num_dominant = min(budget, max(1, round(budget * dominant_ratio)))
    num_context = budget - num_dominant
    ranking = torch.argsort(attention.float(), descending=True, stable=True)
    dominant = torch.sort(ranking[:num_dominant]).values
    rest = torch.sort(ranking[num_dominant:]).values
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    assignment[dominant] = torch.arange(num_dominant, device=device)
    if num_context == 0:
        return assignment, dominant
    if num_context > 1:  # evenly spaced, distinct because num_context <= rest.numel()
        picks = torch.linspace(0, rest.numel() - 1, num_context, device=device).round().long()
    else:
        picks = rest.new_tensor([rest.numel() // 2])
    is_target = torch.zeros(rest.numel(), dtype=torch.bool, device=device)
    is_target[picks] = True
    targets, others = rest[is_target], rest[~is_target]
    assignment[targets] = num_dominant + torch.arange(num_context, device=device)
    if others.numel():
        nearest = cosine_matrix(tokens[others], tokens[targets]).argmax(dim=1)
        assignment[others] = num_dominant + nearest
    return assignment, torch.cat([dominant, targets])


class VisionZipSelection:
    """Dominant + contextual tokens to exactly the budget per image; emits merged tokens."""

    name = "visionzip"
    requires: tuple[str, ...] = ("attention",)

    def __init__(self, dominant_ratio: float = DEFAULT_DOMINANT_RATIO) -> None:
        if not 0.0 < dominant_ratio <= 1.0:
            raise ValueError(f"dominant_ratio must be in (0, 1], got {dominant_ratio}")
        self.dominant_ratio = float(dominant_ratio)

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
        attention = require_extra(extras, "attention", self.name, features)
        if keep is None:
            raise ValueError("VisionZip has no adaptive mode: pass a budget (count or fraction)")
        batch, num_tokens, _ = features.shape
        budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
        assignment = torch.full((batch, num_tokens), -1, dtype=torch.long, device=features.device)
        representatives = []
        for b, positions in enumerate(valid_positions(padding_mask, batch, num_tokens, features.device)):
            if positions.numel() == 0:
                representatives.append(positions)
                continue
            groups, reps = visionzip_groups(features[b, positions], attention[b, positions], int(budgets[b]), self.dominant_ratio)
            assignment[b, positions] = groups
            representatives.append(positions[reps])
        return selection_from_assignment(features, assignment, representatives)
