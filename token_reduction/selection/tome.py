"""Token Merging by bipartite soft matching, applied once to encoder output features.

Method: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv 2210.09461). ToMe
merges inside every ViT block using attention keys; here there is one set of cached features, so
the matching runs on the features themselves, in rounds, until the budget is reached:

1. Split the current tokens alternately (in position order) into sets A and B.
2. Each A token finds its most cosine-similar B token.
3. The ``r`` A tokens with the most similar partners are merged into them, where
   ``r = min(current - budget, |A|)``; merged tokens are size-weighted averages.

Size weighting makes every output token the plain mean of the original tokens it absorbed, so the
size-weighted mean of the output equals the mean of the input exactly (the emitted tokens are
recomputed from the final groups, not accumulated, to keep that exact in floating point).

Representative position of a group: the original position of the B token that absorbed the others
(ToMe keeps destination tokens in place), followed through all rounds.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from token_reduction.selection.base import Budget, TokenSelection, budgets_per_image, valid_counts
from token_reduction.selection.merging import cosine_matrix, selection_from_assignment, valid_positions


def bipartite_merge_groups(tokens: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """Merge ``(n, D)`` tokens down to ``budget`` groups.

    Returns ``(assignment, representatives)``: ``(n,)`` group id of each input token and
    ``(budget,)`` ascending local position of each group's representative.
    """
    n = tokens.shape[0]
    current = tokens.float()
    sizes = torch.ones(n, device=tokens.device)
    reps = torch.arange(n, device=tokens.device)
    assignment = torch.arange(n, device=tokens.device)
    while current.shape[0] > budget:
        m = current.shape[0]
        a_idx = torch.arange(0, m, 2, device=tokens.device)
        b_idx = torch.arange(1, m, 2, device=tokens.device)
        r = min(m - budget, a_idx.numel())
        best_sim, partner = cosine_matrix(current[a_idx], current[b_idx]).max(dim=1)
        order = torch.argsort(best_sim, descending=True, stable=True)
        merged_a, kept_a = order[:r], order[r:]
        # Size-weighted merge of the chosen A tokens into their B partners.
        b_sizes = sizes[b_idx].clone().index_add_(0, partner[merged_a], sizes[a_idx[merged_a]])
        b_sums = (current[b_idx] * sizes[b_idx, None]).index_add_(
            0, partner[merged_a], current[a_idx[merged_a]] * sizes[a_idx[merged_a], None]
        )
        survivors = torch.cat([a_idx[kept_a], b_idx])
        new_tokens = torch.cat([current[a_idx[kept_a]], b_sums / b_sizes[:, None]])
        new_sizes = torch.cat([sizes[a_idx[kept_a]], b_sizes])
        new_reps = reps[survivors]
        # Old slot -> new slot (merged A slots follow their partner), then restore position order.
        order_by_pos = torch.argsort(new_reps, stable=True)
        rank = torch.empty_like(order_by_pos)
        rank[order_by_pos] = torch.arange(order_by_pos.numel(), device=tokens.device)
        old_to_new = torch.empty(m, dtype=torch.long, device=tokens.device)
        old_to_new[survivors] = rank
        old_to_new[a_idx[merged_a]] = rank[kept_a.numel() + partner[merged_a]]
        assignment = old_to_new[assignment]
        current, sizes, reps = new_tokens[order_by_pos], new_sizes[order_by_pos], new_reps[order_by_pos]
    return assignment, reps


class ToMeSelection:
    """ToMe bipartite soft matching to exactly the budget per image; emits merged tokens."""

    name = "tome"
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
            raise ValueError("ToMe has no adaptive mode: pass a budget (count or fraction)")
        batch, num_tokens, _ = features.shape
        budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
        assignment = torch.full((batch, num_tokens), -1, dtype=torch.long, device=features.device)
        representatives = []
        for b, positions in enumerate(valid_positions(padding_mask, batch, num_tokens, features.device)):
            if positions.numel() == 0:
                representatives.append(positions)
                continue
            groups, reps = bipartite_merge_groups(features[b, positions], int(budgets[b]))
            assignment[b, positions] = groups
            representatives.append(positions[reps])
        return selection_from_assignment(features, assignment, representatives)
