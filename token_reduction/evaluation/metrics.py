"""Per-image measures of what a token selection preserved, and their aggregation.

Every function returns one value per image (``(B,)``), with ``NaN`` where a measure is undefined
for that image (no dropped tokens, no text patches); :class:`MetricAccumulator` averages over the
images where it is defined and says how many those were.

* reconstruction (through the neutral reconstructor, on standardised features): cosine and MSE
  over all tokens and over dropped tokens only;
* pooled-embedding cosine: mean of the kept tokens (size-weighted for merged tokens when sizes
  are known) against the mean of all tokens, on raw features: what a pooled readout would see;
* text-patch recall: of patches whose text-box coverage is >= 0.25, the fraction kept. For merging
  methods a patch counts as kept only when it is a representative position, i.e. the token at that
  position reaches the LLM as (part of) an emitted token at that place;
* selection time per image (measured by the harness).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from token_reduction.selection.base import TokenSelection, valid_counts

TEXT_COVERAGE_THRESHOLD = 0.25
METRICS = (
    "recon_cosine",
    "recon_mse",
    "recon_cosine_dropped",
    "recon_mse_dropped",
    "pooled_cosine",
    "text_recall",
    "ocr_recall",
    "ocr_recall_decoded",
    "kept_fraction",
    "time_ms",
)
"""Metric names in report order."""


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` ``(B, N)`` over ``mask`` per image; NaN where the mask is empty."""
    mask = mask.to(values.dtype)
    total = mask.sum(dim=1)
    return torch.where(total > 0, (values * mask).sum(dim=1) / total.clamp_min(1), torch.full_like(total, math.nan))


def reconstruction_scores(prediction: Tensor, target: Tensor, keep_mask: Tensor, padding_mask: Tensor | None = None) -> dict[str, Tensor]:
    """Token cosine and MSE of ``prediction`` vs ``target`` ``(B, N, D)``: over all real tokens and over dropped ones."""
    real = torch.ones_like(keep_mask) if padding_mask is None else ~padding_mask
    dropped = real & ~keep_mask
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    squared = (prediction.float() - target.float()).pow(2).mean(dim=-1)
    return {
        "recon_cosine": _masked_mean(cosine, real),
        "recon_mse": _masked_mean(squared, real),
        "recon_cosine_dropped": _masked_mean(cosine, dropped),
        "recon_mse_dropped": _masked_mean(squared, dropped),
    }


def pooled_cosine(features: Tensor, selection: TokenSelection, padding_mask: Tensor | None = None) -> Tensor:
    """``(B,)`` cosine between the mean of the selected tokens and the mean of all real tokens."""
    real = (torch.ones(features.shape[:2], dtype=torch.bool, device=features.device) if padding_mask is None else ~padding_mask)
    full = _weighted_mean(features.float(), real.float())
    sizes = getattr(selection, "sizes", None)
    weights = sizes.float() if selection.merged and sizes is not None else selection.valid.float()
    kept = _weighted_mean(selection.tokens.float(), weights * selection.valid.float())
    return F.cosine_similarity(kept, full, dim=-1)


def _weighted_mean(tokens: Tensor, weights: Tensor) -> Tensor:
    return (tokens * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


def text_recall(
    keep_mask: Tensor, coverage: Tensor, padding_mask: Tensor | None = None, threshold: float = TEXT_COVERAGE_THRESHOLD
) -> Tensor:
    """``(B,)`` fraction of text patches (coverage >= ``threshold``) that were kept; NaN without text patches."""
    text = coverage >= threshold
    if padding_mask is not None:
        text &= ~padding_mask
    return _masked_mean(keep_mask.float(), text)


def kept_fraction(selection: TokenSelection, features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """``(B,)`` emitted tokens over real tokens: checks budgets and describes adaptive runs."""
    return selection.counts.float() / valid_counts(features, padding_mask).clamp_min(1).float()


class MetricAccumulator:
    """Running means (torchmetrics :class:`MeanMetric`) of per-image metrics, skipping undefined (NaN) values."""

    def __init__(self, names: tuple[str, ...] = METRICS) -> None:
        self.names = names
        self._means = {name: MeanMetric() for name in names}
        self._counts = {name: 0 for name in names}

    def update(self, name: str, values: Tensor, weight: Tensor | float = 1.0) -> None:
        """Add per-image ``values`` (NaNs ignored); ``weight`` counts images for batch-level values."""
        if name not in self._means:
            raise KeyError(f"unknown metric '{name}'; known: {', '.join(self.names)}")
        values = torch.as_tensor(values, dtype=torch.float32).detach().cpu().flatten()
        weights = torch.broadcast_to(torch.as_tensor(weight, dtype=torch.float32).cpu(), values.shape)
        defined = ~torch.isnan(values)
        if defined.any():
            self._means[name].update(values[defined], weights[defined])
            self._counts[name] += int(weights[defined].sum())

    def compute(self) -> dict[str, float | None]:
        """Mean per metric, ``None`` for a metric no image defined."""
        return {name: float(self._means[name].compute()) if self._counts[name] else None for name in self.names}

    def counts(self) -> dict[str, int]:
        """Images that contributed to each metric (e.g. only images with text for ``text_recall``)."""
        return dict(self._counts)
