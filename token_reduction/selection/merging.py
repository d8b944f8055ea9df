"""Shared bookkeeping for methods that emit merged tokens (pooling, ToMe, VisionZip).

Every merging method here ends with the same picture: each input token belongs to at most one
output group, and each group is represented by one of its members' positions. Emitting the group
*mean of its original members* (rather than a running average) makes the result exact and lets
the size-weighted mean of the output equal the mean of the merged inputs, whatever the merge order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from token_reduction.selection.base import TokenSelection


@dataclass
class MergedSelection(TokenSelection):
    """A :class:`TokenSelection` of merged tokens that also says what was merged.

    Attributes:
        sizes: ``(B, K)`` float, how many input tokens each output token averages (0 on padding).
        assignment: ``(B, N)`` long, the output slot each input token was merged into; ``-1`` for
            padding and for tokens a method discarded without merging them anywhere.

    ``indices`` hold each group's *representative position*: an input position that belongs to
    the group (the method documents which one). ``keep_mask`` therefore marks representatives.
    """

    sizes: Tensor | None = None
    assignment: Tensor | None = None


def selection_from_assignment(features: Tensor, assignment: Tensor, representatives: list[Tensor]) -> MergedSelection:
    """Average the members of each group into one token, ordering groups by representative position.

    Args:
        features: ``(B, N, D)`` input tokens.
        assignment: ``(B, N)`` long, group id in ``[0, len(representatives[b]))`` or ``-1``.
        representatives: per image, ``(K_b,)`` distinct input positions, one per group id; each must
            be a member of its own group (checked, so ``keep_mask`` only marks merged-in positions).
    """
    batch, num_tokens, dim = features.shape
    device = features.device
    counts = torch.tensor([len(r) for r in representatives], dtype=torch.long, device=device)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    tokens = torch.zeros(batch, width, dim, dtype=torch.float32, device=device)
    indices = torch.zeros(batch, width, dtype=torch.long, device=device)
    sizes = torch.zeros(batch, width, dtype=torch.float32, device=device)
    valid = torch.arange(width, device=device)[None, :] < counts[:, None]
    ordered_assignment = torch.full((batch, num_tokens), -1, dtype=torch.long, device=device)
    for b, reps in enumerate(representatives):
        reps = reps.to(device=device, dtype=torch.long)
        k = reps.numel()
        if k == 0:
            continue
        order = torch.argsort(reps, stable=True)
        new_slot = torch.empty_like(order)
        new_slot[order] = torch.arange(k, device=device)
        groups = assignment[b].to(device)
        member = groups >= 0
        if member.any() and int(groups[member].max()) >= k:
            raise ValueError(f"image {b}: assignment names group {int(groups[member].max())} but only {k} representatives exist")
        slots = torch.where(member, new_slot[groups.clamp_min(0)], groups)
        if not torch.equal(slots[reps[order]], torch.arange(k, device=device)):
            raise ValueError(f"image {b}: every representative position must belong to its own group")
        ordered_assignment[b] = slots
        tokens[b, :k].index_add_(0, slots[member], features[b, member].float())
        sizes[b, :k].index_add_(0, slots[member], torch.ones(int(member.sum()), device=device))
        tokens[b, :k] /= sizes[b, :k, None]
        indices[b, :k] = reps[order]
    return MergedSelection(
        tokens=tokens.to(features.dtype),
        indices=indices,
        valid=valid,
        counts=counts,
        merged=True,
        sizes=sizes,
        assignment=ordered_assignment,
    )


def valid_positions(padding_mask: Tensor | None, batch: int, num_tokens: int, device: torch.device) -> list[Tensor]:
    """Per image, the ascending positions of real (non-padding) tokens."""
    if padding_mask is None:
        every = torch.arange(num_tokens, device=device)
        return [every for _ in range(batch)]
    return [torch.nonzero(~padding_mask[b], as_tuple=False).flatten() for b in range(batch)]


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``(n, m)`` cosine similarity between rows of ``a`` and ``b`` (computed in float32)."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T
