"""Importance x diversity: keep informative tokens that do not repeat each other.

Pure top-k by an importance score spends the budget on near-copies (ten tokens of the same
high-contrast edge), which a reconstructor or an LLM gains little from. Diversity-aware pruning
fixes that: DivPrune (Alvar et al., CVPR 2025) picks a max-min-diverse subset, ID-Selection and
VisionZip's contextual tokens (Yang et al., CVPR 2025) cover what the top tokens miss. Here the two
are combined greedily, as in maximal marginal relevance: repeatedly keep the token maximising

    importance * (1 - max cosine similarity to the tokens already kept) ** redundancy

(similarities below 0 count as 0, so the second factor lies in [0, 1]). ``redundancy = 0`` is plain
top-k by importance; larger values trade importance for coverage.

**Importance** is rank-based: a valid token with ``a`` valid tokens strictly above it gets
``(n - a) / n`` in ``(0, 1]`` (``n`` valid tokens). Ranks make ``redundancy`` mean the same for
any scorer (pixel std, cosine distances, logits, probabilities all live on different scales; min-max
scaling would let one outlier squash everything else to ~0), every valid token keeps a positive
weight so diversity can always reach it, and tied scores get equal weight, so on a uniform image
the choice is left to diversity.

Also :func:`duplicate_suppression_mask`, which removes near-duplicates from an already chosen
(adaptive) keep mask. Both functions are generic: features and scores only, usable by any selector.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from token_reduction.selection.base import Budget, TokenSelection, budgets_per_image, selection_from_mask, valid_counts
from token_reduction.selection.contrast import check_pixel_patch, contrast_scores

DEFAULT_REDUNDANCY = 1.0
DUPLICATE_TOLERANCE = 1e-6
"""Cosine similarities within this of 1 count as exact duplicates (float32 rounding of identical tokens)."""

SIMILARITY_CHUNK = 1 << 26
"""At most this many pairwise similarities are held at once by :func:`duplicate_suppression_mask`."""


def rank_importance(scores: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """``(B, N)`` rank-based weight in ``(0, 1]`` per valid token (``(n - a) / n``, ties equal); 0 on padding."""
    scores = scores.float()
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask.bool(), float("-inf"))
    negated = -scores
    above = torch.searchsorted(torch.sort(negated, dim=1).values, negated.contiguous(), right=False)
    valid = torch.ones_like(scores, dtype=torch.bool) if padding_mask is None else ~padding_mask.bool()
    counts = valid.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(valid, (counts - above).float() / counts, 0.0)


def diverse_top_k_mask(
    features: Tensor,
    scores: Tensor,
    budgets: Tensor,
    padding_mask: Tensor | None = None,
    *,
    redundancy: float = DEFAULT_REDUNDANCY,
) -> Tensor:
    """``(B, N)`` bool: exactly ``budgets[b]`` tokens per image, greedy importance x diversity.

    Args:
        features: ``(B, N, D)`` token features; diversity is their cosine similarity.
        scores: ``(B, N)`` importance scores, any scale (higher is more important).
        budgets: ``(B,)`` tokens to keep per image, capped at the valid count.
        padding_mask: ``(B, N)`` True on padding, never kept.
        redundancy: exponent of the diversity factor, ``>= 0``; ``0`` reduces to top-k by ``scores``.

    ``max(budgets)`` greedy steps, each an ``O(B * N * D)`` similarity update, vectorised over the
    batch. Ties go to the earlier position. A token whose cosine similarity to a kept token is
    ``1`` (within :data:`DUPLICATE_TOLERANCE`) has no diversity left, so it is only kept once every
    distinct token is; when only such duplicates remain, they are taken by importance.
    """
    if not (redundancy >= 0.0 and redundancy != float("inf")):
        raise ValueError(f"redundancy must be a finite number >= 0, got {redundancy}")
    batch, num_tokens, _ = features.shape
    if scores.shape != (batch, num_tokens) or budgets.shape != (batch,):
        raise ValueError(
            f"expected scores of shape {(batch, num_tokens)} and budgets of shape {(batch,)}, "
            f"got {tuple(scores.shape)} and {tuple(budgets.shape)}"
        )
    device = features.device
    valid = torch.ones(batch, num_tokens, dtype=torch.bool, device=device) if padding_mask is None else ~padding_mask.bool()
    budgets = torch.minimum(budgets.to(device).long(), valid.sum(dim=1))
    weight = rank_importance(scores.to(device), padding_mask)
    unit = F.normalize(features.float(), dim=-1)
    kept = torch.zeros(batch, num_tokens, dtype=torch.bool, device=device)
    closest = torch.zeros(batch, num_tokens, device=device)  # max(0, cosine) to the kept tokens
    images = torch.arange(batch, device=device)
    for step in range(int(budgets.max()) if batch else 0):
        available = valid & ~kept
        novelty = 1.0 - closest
        novelty = torch.where(novelty <= DUPLICATE_TOLERANCE, 0.0, novelty)
        gain = (weight * novelty.pow(redundancy)).masked_fill(~available, -1.0)
        only_duplicates = gain.max(dim=1, keepdim=True).values <= 0.0
        gain = torch.where(only_duplicates, weight.masked_fill(~available, -1.0), gain)
        pick = gain.argmax(dim=1)
        active = step < budgets
        kept[images[active], pick[active]] = True
        similarity = torch.einsum("bnd,bd->bn", unit, unit[images, pick]).clamp(min=0.0)
        closest = torch.where(active[:, None], torch.maximum(closest, similarity), closest)
    return kept


def duplicate_suppression_mask(features: Tensor, keep_mask: Tensor, scores: Tensor, similarity: float) -> Tensor:
    """``keep_mask`` minus every kept token whose cosine similarity to a higher-scoring kept token is ``>= similarity``.

    A one-shot ("fast NMS", Bolya et al., YOLACT, ICCV 2019) duplicate filter for adaptive masks:
    all kept pairs are compared at once (no sequential loop), and "higher-scoring" is a strict
    order, ``scores`` descending then position ascending, so of a group of duplicates exactly the
    best one survives and a uniform image collapses to one token. The top kept token is never
    dropped, and tokens unlike every better kept token are left alone. Unlike sequential NMS a
    token can also be dropped by a better token that is itself dropped (chains ``A ~ B ~ C`` lose
    ``B`` and ``C``), the price of vectorising. Similarities within :data:`DUPLICATE_TOLERANCE` of
    the threshold count as reaching it, so ``similarity=1.0`` removes exact duplicates.

    Args:
        features: ``(B, N, D)`` token features.
        keep_mask: ``(B, N)`` bool, the tokens chosen so far (e.g. by a threshold).
        scores: ``(B, N)`` the scores that chose them; higher wins.
        similarity: cosine threshold in ``[-1, 1]``.
    """
    if not -1.0 <= similarity <= 1.0:
        raise ValueError(f"similarity must be a cosine threshold in [-1, 1], got {similarity}")
    batch, num_tokens, _ = features.shape
    keep = keep_mask.bool()
    ranked = scores.float().masked_fill(~keep, float("-inf"))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    priority = torch.argsort(order, dim=1)  # 0 = best kept token
    unit = F.normalize(features.float(), dim=-1)
    suppressed = torch.zeros_like(keep)
    chunk = max(1, SIMILARITY_CHUNK // max(num_tokens * num_tokens, 1))
    for start in range(0, batch, chunk):
        part = slice(start, start + chunk)
        cosine = unit[part] @ unit[part].transpose(1, 2)  # [b, i, j]
        better = priority[part, None, :] < priority[part, :, None]  # j ranks above i
        duplicate = keep[part, None, :] & better & (cosine >= similarity - DUPLICATE_TOLERANCE)
        suppressed[part] = duplicate.any(dim=-1)
    return keep & ~suppressed


class DiversitySelection:
    """Greedy importance x diversity selection with exact budgets; importance is the contrast score."""

    name = "diversity"
    requires: tuple[str, ...] = ()

    def __init__(self, pixel_patch: int | None = None, redundancy: float = DEFAULT_REDUNDANCY) -> None:
        if not (redundancy >= 0.0 and redundancy != float("inf")):
            raise ValueError(f"redundancy must be a finite number >= 0, got {redundancy}")
        self.pixel_patch = check_pixel_patch(pixel_patch)
        self.redundancy = float(redundancy)

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
            raise ValueError("diversity selection has no adaptive mode: pass a budget (count or fraction)")
        scores = contrast_scores(features, grid=grid, pixel_patch=self.pixel_patch, padding_mask=padding_mask)
        budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
        mask = diverse_top_k_mask(features, scores, budgets, padding_mask, redundancy=self.redundancy)
        return selection_from_mask(features, mask)
