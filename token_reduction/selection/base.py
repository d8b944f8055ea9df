"""The one interface every token-selection method implements, learned or training-free.

A method looks at encoder features ``(B, N, D)`` and says which tokens to keep (or, for merging
methods, which tokens to emit). Everything downstream (evaluation, LLaVA pruning) only speaks
:class:`TokenSelection`, so adding a method never touches those callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor

Budget = int | float
"""How many tokens to keep: an ``int`` is a count, a ``float`` in (0, 1] a fraction of the valid tokens."""


@dataclass
class TokenSelection:
    """Kept tokens per image, padded to the largest count in the batch.

    Attributes:
        tokens: ``(B, K, D)`` the kept (or merged) tokens, in original token order.
        indices: ``(B, K)`` long, position of each kept token in the input sequence; for merging
            methods the position of the token that represents the merged group. Padding is 0.
        valid: ``(B, K)`` bool, False on padding slots.
        counts: ``(B,)`` long, number of valid slots per image.
        merged: True when ``tokens`` are merged features rather than a subset of the input.
    """

    tokens: Tensor
    indices: Tensor
    valid: Tensor
    counts: Tensor
    merged: bool = False

    def keep_mask(self, num_tokens: int) -> Tensor:
        """``(B, N)`` bool mask of the input positions that were kept."""
        batch = self.indices.shape[0]
        # Padding slots point at a spare column, so they can never overwrite a kept position.
        mask = torch.zeros(batch, num_tokens + 1, dtype=torch.bool, device=self.indices.device)
        mask.scatter_(1, torch.where(self.valid, self.indices, num_tokens), True)
        return mask[:, :num_tokens]

    def per_image(self) -> list[Tensor]:
        """The kept tokens of each image without padding, ``[(K_b, D)]``."""
        return [self.tokens[b, : int(c)] for b, c in enumerate(self.counts)]


@runtime_checkable
class SelectionMethod(Protocol):
    """What the evaluation harness and the LLaVA wrappers call."""

    name: str

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
        """Select tokens of ``features`` ``(B, N, D)``.

        Args:
            keep: budget per image (count or fraction); ``None`` lets an adaptive method decide.
            padding_mask: ``(B, N)`` bool, True on padding positions that must never be kept.
            extras: optional encoder side outputs stored at extraction (e.g. ``"attention"``).
            grid: the ``(rows, cols)`` token grid, for spatial methods.
            generator: randomness source, so stochastic methods are reproducible.
        """
        ...


def resolve_budget(keep: Budget, num_tokens: int) -> int:
    """Turn a count or a fraction into a token count in ``[1, num_tokens]``.

    Raises ``ValueError`` for budgets that make no sense rather than silently clamping them.
    """
    if isinstance(keep, bool):
        raise ValueError(f"keep must be a count or a fraction, got {keep!r}")
    if isinstance(keep, float):
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
        return max(1, min(num_tokens, round(keep * num_tokens)))
    if isinstance(keep, int):
        if keep < 1:
            raise ValueError(f"keep count must be >= 1, got {keep}")
        return min(keep, num_tokens)
    raise ValueError(f"keep must be an int count or a float fraction, got {type(keep).__name__}")


def valid_counts(features: Tensor, padding_mask: Tensor | None) -> Tensor:
    """``(B,)`` number of real (non-padding) tokens per image."""
    batch, num_tokens = features.shape[:2]
    if padding_mask is None:
        return torch.full((batch,), num_tokens, dtype=torch.long, device=features.device)
    return (~padding_mask).sum(dim=1)


def budgets_per_image(keep: Budget, counts: Tensor) -> Tensor:
    """``(B,)`` token budget per image, a fraction applying to each image's own valid count."""
    return torch.tensor([resolve_budget(keep, int(n)) for n in counts], dtype=torch.long, device=counts.device)


def selection_from_mask(features: Tensor, keep_mask: Tensor) -> TokenSelection:
    """Gather the tokens where ``keep_mask`` ``(B, N)`` is True, keeping their original order."""
    keep_mask = keep_mask.bool()
    counts = keep_mask.sum(dim=1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    # Stable sort puts kept positions first, in ascending position order.
    order = torch.sort((~keep_mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=features.device)[None, :] < counts[:, None]
    indices = torch.where(valid, order, torch.zeros_like(order))
    tokens = torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))
    tokens = tokens * valid[..., None].to(tokens.dtype)
    return TokenSelection(tokens=tokens, indices=indices, valid=valid, counts=counts)


def selection_from_scores(
    features: Tensor,
    scores: Tensor,
    keep: Budget,
    padding_mask: Tensor | None = None,
) -> TokenSelection:
    """Keep the ``keep`` highest-scoring tokens per image (ties broken by position), in original order."""
    budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
    return selection_from_mask(features, top_k_mask(scores, budgets, padding_mask))


def top_k_mask(scores: Tensor, budgets: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """``(B, N)`` mask of the ``budgets[b]`` highest scores per image; ties go to the earlier position."""
    scores = scores.float()
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask, float("-inf"))
    ranks = torch.argsort(torch.argsort(scores, dim=1, descending=True, stable=True), dim=1)
    keep_mask = ranks < budgets[:, None]
    return keep_mask if padding_mask is None else keep_mask & ~padding_mask
