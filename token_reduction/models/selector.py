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
from huggingface_hub import ModelCard, ModelHubMixin
from safetensors.torch import load_file, save
from torch import Tensor, nn

from token_reduction.cache.manifest import atomic_write_bytes
from token_reduction.errors import UserError
from token_reduction.models.backbone import FeatureStandardizer, TokenTrunk, TrunkConfig
from token_reduction.models.hub import (
    EXPORT_HINT,
    HUB_ERRORS,
    SelectorNotFoundError,
    fetch_file,
    first_line,
    hub_error,
    is_local,
    location,
)
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
CARD_NAME = "README.md"
ARTEFACT_TYPE = "token_reduction.TokenSelector"


class TokenSelector(
    nn.Module,
    ModelHubMixin,
    library_name="token_reduction",
    license="apache-2.0",  # the project's licence (setup.cfg)
    tags=["token-reduction", "visual-token-pruning", "vision-language-model"],
):
    """Keep/drop scorer over ``(B, N, D)`` features; implements :class:`SelectionMethod`.

    ``from_pretrained`` (a folder or a Hub repo), ``save_pretrained`` and ``push_to_hub`` come from
    ``huggingface_hub``'s ``ModelHubMixin``; the files are ``config.json`` (with the ``info``
    provenance), ``model.safetensors`` and a ``README.md`` model card.
    """

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
        self.info: dict[str, Any] = {}  # provenance: written to config.json and the model card, read back on load
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
        """What ``config.json`` holds besides ``info``: enough to rebuild the module before its weights."""
        return {
            "type": ARTEFACT_TYPE,
            "dim": self.dim,
            "trunk": asdict(self.trunk_config),
            "grid": list(self.grid) if self.grid else None,
            "threshold": self.threshold,
            "redundancy": self.redundancy,
            "duplicate_similarity": self.duplicate_similarity,
        }

    def save_pretrained(  # type: ignore[override]  # returns the folder, as it always has
        self,
        save_directory: str | os.PathLike,
        *,
        extra: Mapping[str, Any] | None = None,
        config: Any = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (no pickled code) + ``README.md`` (the model card).

        ``extra`` is the provenance (see :func:`~token_reduction.training.export.export_selector`):
        stored as ``info`` in ``config.json``, shown by the card, and kept as ``self.info`` so a later
        :meth:`push_to_hub` uploads the same. ``push_to_hub=True`` also uploads the folder (the
        mixin's ``push_to_hub``; ``repo_id`` defaults to the folder name). ``config`` is accepted
        for the mixin's sake and ignored: the selector writes its own.
        """
        if extra is not None:
            self.info = dict(extra)
        path = Path(save_directory)
        (path / CARD_NAME).unlink(missing_ok=True)  # the mixin keeps an existing README.md; this export's card replaces it
        super().save_pretrained(
            path, config=config, repo_id=repo_id, push_to_hub=push_to_hub, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs
        )
        return path

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: weights (standardisation statistics included) and config, in the format every release reads."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        config = self.config() | {"info": dict(self.info)}
        atomic_write_bytes(save_directory / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
        atomic_write_bytes(save_directory / CONFIG_NAME, json.dumps(config, indent=2).encode())

    def generate_model_card(self, *args: Any, **template_kwargs: Any) -> ModelCard:
        """The card the mixin writes as ``README.md``; built from :meth:`config` and ``self.info`` alone."""
        from token_reduction.models.model_card import selector_card

        return selector_card(self.config(), self.info, base=self._hub_mixin_info.model_card_data, **template_kwargs)

    @classmethod
    def from_pretrained(  # type: ignore[override]  # same call, map_location and one-line errors added
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        map_location: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        force_download: bool = False,
        **overrides: Any,
    ) -> "TokenSelector":
        """An export folder, or a Hub repo ``owner/name`` at ``revision`` (cache, offline mode and token as in ``huggingface_hub``).

        No code is executed (safetensors + JSON). ``overrides`` replace saved constructor
        arguments, e.g. ``threshold=0.3``. Anything that is not a selector raises a one-line
        :class:`~token_reduction.errors.UserError`.
        """
        where = str(pretrained_model_name_or_path)
        if is_local(pretrained_model_name_or_path) and not os.path.isdir(where):
            raise SelectorNotFoundError(where, None, "no such folder; give a folder written by `token-reduction export` or a Hub repo id owner/name")
        if os.path.isdir(where):  # check before the mixin, which only logs a warning for a folder without config.json
            fetch_file(where, CONFIG_NAME)
            fetch_file(where, WEIGHTS_NAME)
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token, force_download=force_download)
        try:
            return super().from_pretrained(where, map_location=str(map_location), **hub, **overrides)
        except UserError:
            raise
        except json.JSONDecodeError as err:
            raise UserError(location(where, revision, CONFIG_NAME), None, f"is not valid JSON ({err.msg}); re-export the selector") from err
        except HUB_ERRORS as err:
            raise hub_error(where, revision, err, CONFIG_NAME) from err

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        map_location: str = "cpu",
        **init: Any,
    ) -> "TokenSelector":
        """The mixin's hook: it passes the parsed ``config.json`` and the constructor arguments found there."""
        hub = dict(revision=revision, cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only, token=token)
        for legacy in ("proxies", "resume_download"):  # passed by older huggingface_hub releases
            init.pop(legacy, None)
        config_where = location(model_id, revision, CONFIG_NAME)
        if config is None:  # the mixin swallows Hub errors on config.json: fetch it again to report the real one
            fetch_file(model_id, CONFIG_NAME, **hub)
            raise UserError(config_where, None, f"could not be read; {EXPORT_HINT}")
        if not isinstance(config, dict) or config.get("type") != ARTEFACT_TYPE:
            found = config.get("type") if isinstance(config, dict) else type(config).__name__
            raise UserError(config_where, "type", f"is {found!r}, not {ARTEFACT_TYPE!r}: not an exported TokenSelector; {EXPORT_HINT}")
        selector = cls(**constructor_arguments(init, config_where))
        weights = fetch_file(model_id, WEIGHTS_NAME, **hub)
        weights_where = location(model_id, revision, WEIGHTS_NAME)
        try:
            state = load_file(weights, device=str(map_location))
        except Exception as err:  # safetensors raises its own error type for a truncated or foreign file
            raise UserError(weights_where, None, f"is not a readable safetensors file ({first_line(err)}); re-export the selector") from err
        try:
            selector.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(weights_where, None, f"weights do not match {CONFIG_NAME} ({first_line(err)}); re-export the selector") from err
        selector.info = dict(config.get("info") or {})
        return selector.to(map_location).eval()


def constructor_arguments(init: dict[str, Any], where: str) -> dict[str, Any]:
    """``config.json`` values (JSON types) as :class:`TokenSelector` arguments, naming the bad field."""
    arguments = dict(init)
    for field in ("dim", "trunk"):
        if field not in arguments:
            raise UserError(where, field, f"missing; {EXPORT_HINT}")
    try:
        arguments["dim"] = int(arguments["dim"])
    except (TypeError, ValueError):
        raise UserError(where, "dim", f"is {arguments['dim']!r}, not an integer feature dim; re-export the selector") from None
    trunk = arguments["trunk"]
    if isinstance(trunk, Mapping):
        try:
            arguments["trunk"] = TrunkConfig(**trunk)
        except TypeError as err:
            raise UserError(where, "trunk", f"{first_line(err)}; re-export the selector with this version") from None
    grid = arguments.get("grid")
    if grid is not None and (not isinstance(grid, (list, tuple)) or len(grid) != 2):
        raise UserError(where, "grid", f"is {grid!r}, not [rows, cols] or null; re-export the selector")
    for field in ("threshold", "redundancy"):
        if arguments.get(field) is not None:
            arguments[field] = float(arguments[field])
    return arguments


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
