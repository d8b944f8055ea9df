"""Temporal-redundancy selection: spend a video's token budget on what changed.

Frames of a clip repeat one another. A token showing what the same grid position already showed
in an earlier kept frame tells the LLM little, so :class:`TemporalSelection` wraps any per-frame
selection method (the *base*) and selects over a whole clip ``(T, N, D)`` at once:

1. **Total budget.** ``keep`` means what it means per frame (a fraction of each frame's valid
   tokens, or a count per frame), summed over the clip: temporal mode spends exactly the tokens
   per-frame selection would, only distributed differently. Adaptive ``keep=None`` takes the
   total the base method's own adaptive choice adds up to.
2. **Frame budgets by novelty.** A frame's *novelty mass* is the sum over its positions of
   ``novelty(x_t[p], x_{t-1}[p])``; frame 0 counts every valid token as novel. The total is split
   in proportion to ``uniform_share / T + (1 - uniform_share) * mass_t / sum(mass)`` (continuous
   water-filling, then largest-remainder rounding), each frame getting at least ``min_per_frame``
   tokens and at most its valid count, so static frames get fewer tokens and the sum is exact.
3. **Frame 0** keeps the base method's own selection at its budget.
4. **Frames 1..T-1**, in order: each token's novelty is measured against the *most recent kept
   token at the same position* (a position never kept so far is fully novel), and fused with the
   base method's preference; the frame keeps its top ``k_t`` fused scores. The reference is then
   updated with the tokens this frame kept.

``novelty(a, b) = clamp(1 - cos(a, b), 0, 1)``: 0 for a repeat, 1 for an orthogonal (or never
seen) token.

**Fusion** (``fusion=``):

* ``"product"`` (default): ``novelty * q`` where ``q`` in ``(0, 1]`` is the token's percentile
  rank among its frame's valid tokens under the base method's scores (1 = the base method's
  favourite). Percentile ranks make any score scale comparable; the product keeps a token only
  if it is both new and wanted, and a repeated token (novelty 0) goes first, whatever its score.
* ``"rank"``: Borda count, the sum of the two per-frame percentile ranks (novelty and base).
* ``"novelty"``: novelty alone (the base method then only chooses frame 0).

Where the base scores come from: a method with ``keep_probability`` (the trained
:class:`~token_reduction.models.selector.TokenSelector`) or a ``scores(features, padding_mask=,
grid=)`` method gives per-token scores; ``norm`` gives feature norms. Any other method (random,
pooling, ToMe, ...) only says *which* tokens it would keep at the frame's average budget: ``q`` is
1 for those and 0.5 for the rest. Merging methods contribute positions only: temporal selection
returns original tokens (``merged=False``).

:func:`hold_reconstruction` is the simple, declared reconstruction the benchmark scores clips
with: every dropped token is replaced by the most recent kept token at its position, or by its
frame's mean kept token when that position was never kept.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from token_reduction.selection.base import Budget, SelectionMethod, TokenSelection, resolve_budget, selection_from_mask

FUSIONS = ("product", "rank", "novelty")


# ------------------------------------------------------------------------------------ pieces
def novelty(current: Tensor, reference: Tensor, seen: Tensor | None = None) -> Tensor:
    """``(..., N)`` novelty of ``current`` against ``reference`` (both ``(..., N, D)``), in ``[0, 1]``.

    ``1 - cosine`` clamped to ``[0, 1]``; positions where ``seen`` is False have no reference and
    are fully novel (1).
    """
    cos = F.cosine_similarity(current.float(), reference.float(), dim=-1, eps=1e-8)
    value = (1.0 - cos).clamp(0.0, 1.0)
    if seen is not None:
        value = torch.where(seen, value, torch.ones_like(value))
    return value


def novelty_mass(frames: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """``(T,)`` summed novelty of each frame against the previous frame; frame 0 is all novel."""
    valid = torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device) if padding_mask is None else ~padding_mask
    mass = torch.empty(frames.shape[0], dtype=torch.float32, device=frames.device)
    mass[0] = valid[0].sum()
    if frames.shape[0] > 1:
        both = valid[1:] & valid[:-1]
        step = novelty(frames[1:], frames[:-1], both)  # a position that appears is novel
        mass[1:] = (step * valid[1:]).sum(dim=1)
    return mass


def allocate(total: int, weights: Tensor, capacity: Tensor, minimum: int = 1) -> Tensor:
    """Integer budgets ``(T,)`` summing to ``total``, proportional to ``weights`` within bounds.

    Each frame gets between ``min(minimum, capacity_t)`` and ``capacity_t``; when the floors alone
    exceed ``total`` they are dropped. Continuous water-filling finds ``a_t = clamp(floor_t +
    lam * w_t, floor_t, cap_t)`` with ``sum(a) = total``; rounding gives the leftover tokens to the
    largest fractional parts (ties to earlier frames).
    """
    capacity = capacity.long().cpu()
    cap_total = int(capacity.sum())
    if not 0 <= total <= cap_total:
        raise ValueError(f"cannot place {total} tokens in frames holding {cap_total}")
    floor = torch.clamp(capacity, max=max(minimum, 0))
    if int(floor.sum()) > total:
        floor = torch.zeros_like(capacity)
    w = weights.detach().double().cpu().clamp_min(0.0)
    w = w + (1e-9 * float(w.mean()) if float(w.sum()) > 0 else 1.0)  # zero-weight frames fill last
    cap, low = capacity.double(), floor.double()

    def filled(lam: float) -> Tensor:
        return torch.minimum(low + lam * w, cap)

    lo, hi = 0.0, 1.0
    while float(filled(hi).sum()) < total and hi < 1e300:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if float(filled(mid).sum()) < total:
            lo = mid
        else:
            hi = mid
    real = filled(hi)
    budgets = torch.minimum(real.floor().long(), capacity)
    left = total - int(budgets.sum())
    if left > 0:
        room = budgets < capacity
        fraction = torch.where(room, real - budgets.double(), torch.full_like(real, -1.0))
        order = torch.argsort(-fraction, stable=True)
        for index in order[:left].tolist():
            budgets[index] += 1
    elif left < 0:  # numerical overshoot: take back from the largest overshoots
        excess = torch.where(budgets > floor, budgets.double() - real, torch.full_like(real, -1e9))
        for index in torch.argsort(-excess, stable=True)[: -left].tolist():
            budgets[index] -= 1
    return budgets


def percentile_rank(scores: Tensor, valid: Tensor) -> Tensor:
    """``(T, N)`` rank of each score among its row's valid entries, mapped to ``(0, 1]`` (best = 1)."""
    scores = scores.float().masked_fill(~valid, float("-inf"))
    ranks = torch.argsort(torch.argsort(scores, dim=1, descending=True, stable=True), dim=1)
    counts = valid.sum(dim=1, keepdim=True).clamp_min(1)
    return ((counts - ranks).clamp_min(0).float() / counts.float()) * valid


def hold_reconstruction(frames: Tensor, keep_mask: Tensor) -> Tensor:
    """``(T, N, D)`` clip rebuilt from its kept tokens, the temporal benchmark's reconstruction.

    A kept token is itself. A dropped token becomes the most recent kept token at the same
    position (in this frame's past), or, when that position was never kept, the mean of the
    frame's kept tokens (zeros for a frame with none kept).
    """
    out = torch.empty_like(frames)
    reference = torch.zeros_like(frames[0])
    seen = torch.zeros(frames.shape[1], dtype=torch.bool, device=frames.device)
    for t in range(frames.shape[0]):
        mask = keep_mask[t]
        reference = torch.where(mask[:, None], frames[t], reference)
        seen = seen | mask
        mean = frames[t][mask].mean(dim=0) if bool(mask.any()) else torch.zeros_like(frames[t, 0])
        out[t] = torch.where(seen[:, None], reference, mean[None])
    return out


# ------------------------------------------------------------------------------ base scores
def _base_input(base: Any, features: Tensor) -> Tensor:
    if isinstance(base, nn.Module):
        params = next(iter(base.parameters()), None)
        if params is not None:
            return features.to(device=params.device, dtype=params.dtype)
    return features


@torch.no_grad()
def base_preference(
    base: SelectionMethod,
    frames: Tensor,
    valid: Tensor,
    grid: tuple[int, int] | None,
    keep_hint: Budget,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(T, N)`` base preference ``q`` in ``[0, 1]``: a percentile rank, or 1/0.5 membership (see module doc)."""
    from token_reduction.selection.feature_norm import FeatureNormSelection

    padding = None if bool(valid.all()) else ~valid
    scores: Tensor | None = None
    if callable(getattr(base, "keep_probability", None)):
        inputs = _base_input(base, frames)
        scores = base.keep_probability(inputs, None if padding is None else padding.to(inputs.device), grid)
    elif callable(getattr(base, "scores", None)):
        scores = base.scores(frames, padding_mask=padding, grid=grid)
    elif isinstance(base, FeatureNormSelection):
        norms = frames.float().norm(dim=-1)
        scores = norms if base.largest else -norms
    if scores is not None:
        return percentile_rank(scores.to(frames.device), valid)
    selection = base.select(_base_input(base, frames), keep_hint, padding_mask=padding, grid=grid, generator=generator)
    member = selection.keep_mask(frames.shape[1]).to(frames.device)
    return (0.5 + 0.5 * member.float()) * valid


# ---------------------------------------------------------------------------------- the method
class TemporalSelection:
    """Select over a clip ``(T, N, D)`` with one total budget, preferring what changed (module doc).

    Args:
        base: the per-frame method: it selects frame 0 and scores every frame's tokens.
        fusion: ``"product"`` (default), ``"rank"`` or ``"novelty"``; see the module docstring.
        min_per_frame: tokens every frame keeps at least (when the total allows it).
        uniform_share: part of the total split evenly across frames before the novelty split
            (0 = purely by novelty, 1 = per-frame budgets, only the choice within frames changes).
    """

    name = "temporal"

    def __init__(self, base: SelectionMethod, fusion: str = "product", min_per_frame: int = 1, uniform_share: float = 0.0) -> None:
        if not callable(getattr(base, "select", None)):
            raise TypeError(f"base must implement SelectionMethod.select, got {type(base).__name__}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if not 0.0 <= uniform_share <= 1.0:
            raise ValueError(f"uniform_share must be in [0, 1], got {uniform_share}")
        if min_per_frame < 0:
            raise ValueError(f"min_per_frame must be >= 0, got {min_per_frame}")
        self.base = base
        self.fusion = fusion
        self.min_per_frame = int(min_per_frame)
        self.uniform_share = float(uniform_share)
        self.last_budgets: Tensor | None = None
        """``(T,)`` frame budgets of the latest call, for reporting."""

    @property
    def dim(self) -> int | None:
        return getattr(self.base, "dim", None)

    @property
    def requires(self) -> tuple[str, ...]:
        return tuple(getattr(self.base, "requires", ()) or ())

    # ------------------------------------------------------------------------------ budgets
    def total_budget(
        self,
        frames: Tensor,
        keep: Budget | None,
        valid: Tensor,
        grid: tuple[int, int] | None = None,
        threshold: float | None = None,
        generator: torch.Generator | None = None,
    ) -> int:
        """What per-frame selection would keep over the whole clip (see the module docstring)."""
        counts = [int(n) for n in valid.sum(dim=1)]
        if keep is not None:
            return sum(resolve_budget(keep, n) for n in counts if n > 0)
        kwargs: dict[str, Any] = {"padding_mask": None if bool(valid.all()) else ~valid, "grid": grid, "generator": generator}
        if threshold is not None:
            kwargs["threshold"] = threshold
        selection = self.base.select(_base_input(self.base, frames), None, **kwargs)
        return int(selection.counts.sum())

    def frame_budgets(self, frames: Tensor, total: int, valid: Tensor) -> Tensor:
        """``(T,)`` budgets summing to ``total``, by novelty mass (see the module docstring)."""
        capacity = valid.sum(dim=1).cpu()
        mass = novelty_mass(frames, ~valid).cpu().double()
        share = mass / mass.sum() if float(mass.sum()) > 0 else torch.full_like(mass, 1.0 / len(mass))
        weights = self.uniform_share / len(mass) + (1.0 - self.uniform_share) * share
        return allocate(total, weights, capacity, self.min_per_frame)

    # ---------------------------------------------------------------------------- selection
    def fuse(self, new: Tensor, preference: Tensor, valid: Tensor) -> Tensor:
        """``(N,)`` fused score of one frame; higher is kept first."""
        if self.fusion == "product":
            return new * preference
        if self.fusion == "rank":
            return percentile_rank(new[None], valid[None])[0] + percentile_rank(preference[None], valid[None])[0]
        return new

    @torch.no_grad()
    def select(
        self,
        features: Tensor,
        keep: Budget | None = None,
        *,
        padding_mask: Tensor | None = None,
        extras: Mapping[str, Tensor] | None = None,
        grid: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
        threshold: float | None = None,
    ) -> TokenSelection:
        """Select tokens of the clip ``features`` ``(T, N, D)``: the rows are *frames of one clip*.

        Returns one row per frame, with the frames' counts summing to the clip's total budget.
        """
        if features.ndim != 3:
            raise ValueError(f"temporal selection expects one clip of shape (frames, tokens, dim), got {tuple(features.shape)}")
        frames_count, num_tokens, _ = features.shape
        valid = torch.ones(frames_count, num_tokens, dtype=torch.bool, device=features.device)
        if padding_mask is not None:
            valid = ~padding_mask.to(features.device)
        total = self.total_budget(features, keep, valid, grid, threshold, generator)
        budgets = self.frame_budgets(features, total, valid)
        self.last_budgets = budgets
        average = max(1, round(total / max(frames_count, 1)))
        preference = base_preference(self.base, features, valid, grid, average, generator)

        mask = torch.zeros(frames_count, num_tokens, dtype=torch.bool, device=features.device)
        k0 = int(budgets[0])
        if k0 > 0:
            first_padding = None if bool(valid[0].all()) else ~valid[0:1]
            first = self.base.select(
                _base_input(self.base, features[0:1]), k0, padding_mask=first_padding, grid=grid, generator=generator
            )
            mask[0] = first.keep_mask(num_tokens)[0].to(features.device) & valid[0]
        reference = torch.where(mask[0, :, None], features[0], torch.zeros_like(features[0]))
        seen = mask[0].clone()
        for t in range(1, frames_count):
            k = int(budgets[t])
            if k > 0:
                score = self.fuse(novelty(features[t], reference, seen), preference[t], valid[t]).float()
                score = score.masked_fill(~valid[t], float("-inf"))
                # Ties (e.g. repeated tokens, novelty 0) go to the base method's favourites, then by position.
                by_preference = torch.argsort(preference[t], descending=True, stable=True)
                order = by_preference[torch.argsort(score[by_preference], descending=True, stable=True)]
                mask[t, order[:k]] = True
                mask[t] &= valid[t]
            reference = torch.where(mask[t, :, None], features[t], reference)
            seen |= mask[t]
        return selection_from_mask(features, mask)


__all__ = [
    "FUSIONS",
    "TemporalSelection",
    "allocate",
    "base_preference",
    "hold_reconstruction",
    "novelty",
    "novelty_mass",
    "percentile_rank",
]
