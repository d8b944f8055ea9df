"""The training objective: rebuild every token from the kept ones, while keeping as few as possible."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossConfig:
    """Weights of the loss terms.

    Attributes:
        mse_weight: weight of the MSE between reconstructed and original standardised features.
        cosine_weight: weight of ``1 - cosine`` between reconstructed and original tokens.
        sparsity_weight: weight of the sparsity term on the keep probabilities.
        target_keep_rate: ``None`` penalises the mean keep probability itself (the paper's plain
            penalty, the rate then follows from the weight); a number in (0, 1) penalises the squared
            distance of the batch's mean keep probability to that rate instead, which pins the
            average budget while each image still keeps as many tokens as it needs.
        error_weight: weight of the error-prediction term (0 = the paper's objective alone). Each
            step also reconstructs the batch from a uniformly random mask; the selector's keep logit
            of every dropped token is regressed onto ``log(error / error_tolerance)``, the log of how
            badly the reconstructor restored it from random context. The selector so learns, from
            the encoder's tokens alone, which tokens the others cannot stand in for, whatever their
            colour; ``sigmoid(logit) >= 0.5`` then means "expected error above the tolerance".
        error_tolerance: per-token reconstruction MSE (standardised units) that adaptive mode
            accepts for a dropped token.
        error_channel_groups: the token's dims form this many equal groups (3 for ``pixels:P``:
            the R, G and B planes); each group's mean error is its "colour" error.
        error_colour_weight: weight of that colour error in the selector's target (1 = plain MSE).
            A dropped uniform patch costs only its colour, which a reconstructor can take from any
            kept neighbour of that colour; below 1 the selector ranks tokens by what context
            cannot restore (structure: strokes, edges, texture) instead of by colour.
    """

    mse_weight: float = 1.0
    cosine_weight: float = 1.0
    sparsity_weight: float = 0.1
    target_keep_rate: float | None = None
    error_weight: float = 0.0
    error_tolerance: float = 0.1
    error_channel_groups: int = 1
    error_colour_weight: float = 1.0

    def __post_init__(self) -> None:
        """Fail at start-up, naming the field, rather than at the first training step."""
        if self.error_weight < 0 or self.error_colour_weight < 0:
            raise ValueError("model.loss.error_weight and model.loss.error_colour_weight must be >= 0")
        if self.error_tolerance <= 0:
            raise ValueError(f"model.loss.error_tolerance must be > 0, got {self.error_tolerance}")
        if self.error_channel_groups < 1:
            raise ValueError(f"model.loss.error_channel_groups must be >= 1, got {self.error_channel_groups}")


def masked_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over positions where ``weights`` (B, N) is nonzero (all positions when ``None``)."""
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def reconstruction_terms(prediction: Tensor, target: Tensor, valid: Tensor | None = None) -> dict[str, Tensor]:
    """Per-batch MSE and cosine error between ``(B, N, D)`` tensors, ignoring invalid positions."""
    mse = (prediction.float() - target.float()).pow(2).mean(dim=-1)
    cosine = F.cosine_similarity(prediction.float(), target.float(), dim=-1)
    return {"mse": masked_mean(mse, valid), "cosine": masked_mean(cosine, valid)}


def sparsity_term(keep_prob: Tensor, config: LossConfig, valid: Tensor | None = None) -> Tensor:
    """Push the keep rate down (or toward ``target_keep_rate``)."""
    if valid is None:
        per_image = keep_prob.mean(dim=1)
    else:
        per_image = (keep_prob * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    if config.target_keep_rate is None:
        return per_image.mean()
    return (per_image.mean() - config.target_keep_rate).pow(2)


def token_error(prediction: Tensor, target: Tensor, groups: int = 1, colour_weight: float = 1.0) -> Tensor:
    """``(B, N)`` per-token squared error, its per-group mean ("colour") part weighted by ``colour_weight``."""
    diff = (prediction.float() - target.float()).unflatten(-1, (groups, -1))
    colour = diff.mean(dim=-1).pow(2).mean(dim=-1)
    structure = diff.var(dim=-1, unbiased=False).mean(dim=-1)
    return structure + colour_weight * colour


def error_prediction_term(logits: Tensor, error: Tensor, dropped: Tensor, tolerance: float) -> Tensor:
    """Squared distance of keep logits to ``log(error / tolerance)`` over the dropped tokens.

    ``error`` ``(B, N)`` is the per-token reconstruction MSE under a random mask (detached here: it
    is the target, not something to lower through the selector).
    """
    goal = torch.log(error.detach().float().clamp_min(1e-4) / tolerance)
    return masked_mean((logits.float() - goal).pow(2), dropped)


def total_loss(prediction: Tensor, target: Tensor, keep_prob: Tensor, config: LossConfig, valid: Tensor | None = None) -> dict[str, Tensor]:
    """All terms plus their weighted sum under ``"loss"``; each term is logged separately."""
    terms = reconstruction_terms(prediction, target, valid)
    terms["sparsity"] = sparsity_term(keep_prob, config, valid)
    terms["loss"] = (
        config.mse_weight * terms["mse"]
        + config.cosine_weight * (1.0 - terms["cosine"])
        + config.sparsity_weight * terms["sparsity"]
    )
    return terms
