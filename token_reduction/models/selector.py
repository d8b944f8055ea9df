"""The Feature Selector: scores every visual token and decides keep or drop.

Training samples a binary mask with the Gumbel-Softmax straight-through trick (binary forward,
gradients reach the logits). Inference is deterministic: keep tokens above a probability threshold
(adaptive: each image keeps what it needs) or the top-k (a fixed budget).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from token_reduction.cache.manifest import atomic_write_bytes
from token_reduction.models.backbone import FeatureStandardizer, TokenTrunk, TrunkConfig
from token_reduction.selection.base import (
    Budget,
    TokenSelection,
    budgets_per_image,
    selection_from_mask,
    selection_from_scores,
    valid_counts,
)
from token_reduction.selection.diversity import diverse_top_k_mask, duplicate_suppression_mask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARTEFACT_TYPE = "token_reduction.TokenSelector"


class TokenSelector(nn.Module):
    """Keep/drop scorer over ``(B, N, D)`` features; implements :class:`SelectionMethod`."""

    name = "learned"

    def __init__(
        self,
        dim: int,
        trunk: TrunkConfig | None = None,
        grid: tuple[int, int] | None = None,
        threshold: float = 0.5,
        init_keep_logit: float = 2.0,
        redundancy: float = 0.0,
        duplicate_similarity: float | None = None,
    ) -> None:
        """``redundancy`` > 0: budgets are filled by importance x diversity (learned scores, feature
        cosine; see :func:`diverse_top_k_mask`). ``duplicate_similarity``: adaptive mode also drops
        kept tokens this similar to a better-scored kept one. Both off reproduce the paper."""
        super().__init__()
        self.dim = dim
        self.trunk_config = trunk or TrunkConfig()
        self.grid = tuple(grid) if grid is not None else None
        self.threshold = threshold
        self.redundancy = float(redundancy)
        self.duplicate_similarity = duplicate_similarity
        self.standardize = FeatureStandardizer(dim)
        self.trunk = TokenTrunk(dim, self.trunk_config)
        self.head = nn.Linear(self.trunk.width, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, init_keep_logit)  # start by keeping most tokens

    def forward(self, features: Tensor, padding_mask: Tensor | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        """Keep logits ``(B, N)``; ``sigmoid`` of them is the keep probability. Padding gets ``-inf``."""
        if features.ndim != 3 or features.shape[-1] != self.dim:
            raise ValueError(
                f"TokenSelector expects features of shape (batch, tokens, {self.dim}), got {tuple(features.shape)}; "
                "was it trained for another encoder?"
            )
        features = features.to(self.head.weight.dtype)  # caches hold fp16; the selector may run in fp32
        h = self.trunk(self.standardize(features), grid or self.grid_for(features.shape[1]), padding_mask)
        logits = self.head(h).squeeze(-1).float()
        if padding_mask is not None:
            logits = logits.masked_fill(padding_mask, float("-inf"))
        return logits

    def grid_for(self, num_tokens: int) -> tuple[int, int] | None:
        """The training grid when the token count matches it, else let the trunk infer one."""
        if self.grid is not None and self.grid[0] * self.grid[1] == num_tokens:
            return self.grid
        return None

    def keep_probability(self, features: Tensor, padding_mask: Tensor | None = None, grid: tuple[int, int] | None = None) -> Tensor:
        return torch.sigmoid(self(features, padding_mask, grid))

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
        """Adaptive (``keep=None``: probability >= threshold) or budget (``keep`` count/fraction) selection.

        Kept tokens stay in their original order. Adaptive mode always keeps at least one token.
        """
        logits = self(features, padding_mask, grid)
        if keep is not None:
            if self.redundancy > 0:
                budgets = budgets_per_image(keep, valid_counts(features, padding_mask))
                mask = diverse_top_k_mask(features, logits, budgets, padding_mask, redundancy=self.redundancy)
                return selection_from_mask(features, mask)
            return selection_from_scores(features, logits, keep, padding_mask)
        threshold = self.threshold if threshold is None else threshold
        keep_mask = torch.sigmoid(logits) >= threshold
        if padding_mask is not None:
            keep_mask &= ~padding_mask
        if self.duplicate_similarity is not None:
            keep_mask = duplicate_suppression_mask(features, keep_mask, logits, self.duplicate_similarity)
        best = F.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()  # padding is -inf: never the argmax
        return selection_from_mask(features, keep_mask | best)

    # ----------------------------------------------------------------------------------------- I/O
    def config(self) -> dict[str, Any]:
        return {
            "type": ARTEFACT_TYPE,
            "dim": self.dim,
            "trunk": asdict(self.trunk_config),
            "grid": list(self.grid) if self.grid else None,
            "threshold": self.threshold,
            "redundancy": self.redundancy,
            "duplicate_similarity": self.duplicate_similarity,
        }

    def save_pretrained(self, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (weights only, no pickled code)."""
        path = Path(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = self.config() | {"info": dict(extra or {})}
        atomic_write_bytes(path / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
        atomic_write_bytes(path / CONFIG_NAME, json.dumps(config, indent=2).encode())
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "TokenSelector":
        """Load an exported selector folder (no Lightning needed, no code executed)."""
        path = Path(path)
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not config_path.exists() or not weights_path.exists():
            raise FileNotFoundError(
                f"{path} is not an exported TokenSelector (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "export one with `token-reduction export` or train with `token-reduction fit`"
            )
        config = json.loads(config_path.read_text())
        if config.get("type") != ARTEFACT_TYPE:
            raise ValueError(f"{config_path}: field 'type' is {config.get('type')!r}, expected {ARTEFACT_TYPE!r}")
        selector = cls(
            dim=int(config["dim"]),
            trunk=TrunkConfig(**config["trunk"]),
            grid=tuple(config["grid"]) if config.get("grid") else None,
            threshold=float(config.get("threshold", 0.5)),
            redundancy=float(config.get("redundancy", 0.0)),
            duplicate_similarity=config.get("duplicate_similarity"),
        )
        state = load_file(str(weights_path), device=str(map_location))
        try:
            selector.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights_path}: weights do not match {config_path}: {err}") from err
        selector.info = config.get("info", {})
        return selector.to(map_location).eval()


def gumbel_keep_mask(logits: Tensor, tau: float, padding_mask: Tensor | None = None) -> Tensor:
    """Hard straight-through keep mask ``(B, N)`` from binary Gumbel-Softmax on keep logits."""
    two_class = torch.stack([logits, torch.zeros_like(logits)], dim=-1)
    if padding_mask is not None:
        two_class = two_class.masked_fill(padding_mask[..., None], 0.0)
    mask = F.gumbel_softmax(two_class, tau=tau, hard=True, dim=-1)[..., 0]
    if padding_mask is not None:
        mask = mask.masked_fill(padding_mask, 0.0)
    return mask


def gumbel_topk_mask(logits: Tensor, budgets: Tensor, tau: float, padding_mask: Tensor | None = None) -> Tensor:
    """Hard straight-through mask keeping exactly ``budgets[b]`` tokens per image.

    Tokens are ranked by logits plus logistic noise (the binary Gumbel perturbation); the soft
    relaxation is a sigmoid around the boundary between the k-th and (k+1)-th perturbed score, so
    gradients teach the selector which tokens belong inside a fixed budget.
    """
    uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    perturbed = logits + torch.log(uniform) - torch.log1p(-uniform)
    if padding_mask is not None:
        perturbed = perturbed.masked_fill(padding_mask, float("-inf"))
    ordered = perturbed.sort(dim=1, descending=True).values
    kth = ordered.gather(1, (budgets - 1).clamp_min(0)[:, None])
    next_ = ordered.gather(1, budgets.clamp_max(logits.shape[1] - 1)[:, None])
    next_ = torch.where(budgets[:, None] >= logits.shape[1], kth - 1.0, next_)
    next_ = torch.where(torch.isfinite(next_), next_, kth - 1.0)
    boundary = (kth + next_) / 2
    soft = torch.sigmoid((perturbed - boundary) / tau)
    hard = (perturbed >= kth).to(soft.dtype)
    mask = hard + soft - soft.detach()
    if padding_mask is not None:
        mask = mask.masked_fill(padding_mask, 0.0)
    return mask
