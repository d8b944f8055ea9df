"""The NEUTRAL reconstructor: one shared probe that scores what any selection preserved.

A selector's own reconstructor was trained alongside it and would flatter it. The neutral one is
trained once per cache on *uniformly random* masks of random sizes (keep fraction ~
``U(min_keep, max_keep)``), so no method's selection pattern is favoured. Its settings come from
``lightning_configs/evaluate/neutral_reconstructor.yaml``; the trained weights are cached (safetensors
+ ``config.json``) and reused while the cache's encoder/dim/grid and those settings match.

Input convention: the kept tokens (standardised) sit at their positions and every other position
gets the one learnable mask embedding. For merging methods the merged tokens sit at their
*representative positions* (see each method's docstring) and the rest of each group is masked.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cache.manifest import Manifest, atomic_write_bytes
from token_reduction.models.backbone import FeatureStandardizer, TrunkConfig
from token_reduction.models.reconstructor import FeatureReconstructor, MaskedSequence
from token_reduction.resources import resource_path
from token_reduction.selection.base import TokenSelection

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = resource_path("lightning_configs/evaluate/neutral_reconstructor.yaml")
DEFAULT_FOLDER_NAME = "neutral_reconstructor"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARTEFACT_TYPE = "token_reduction.NeutralReconstructor"


@dataclass(frozen=True)
class NeutralConfig:
    """Architecture and training settings; every field is documented in the YAML file."""

    width: int | None
    depth: int
    heads: int
    mlp_ratio: float
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    min_keep: float
    max_keep: float
    seed: int
    stats_samples: int

    def __post_init__(self) -> None:
        if not 0.0 < self.min_keep <= self.max_keep <= 1.0:
            raise ValueError(f"neutral reconstructor needs 0 < min_keep <= max_keep <= 1, got {self.min_keep}, {self.max_keep}")
        if self.steps < 0 or self.batch_size < 1 or self.stats_samples < 1:
            raise ValueError("neutral reconstructor needs steps >= 0, batch_size >= 1 and stats_samples >= 1")

    def trunk(self) -> TrunkConfig:
        return TrunkConfig(width=self.width, depth=self.depth, heads=self.heads, mlp_ratio=self.mlp_ratio)


def load_neutral_config(path: str | Path | None = None, **overrides: Any) -> NeutralConfig:
    """Read the YAML config (default: the repo's ``lightning_configs/evaluate/...``), then apply overrides.

    ``None`` overrides are ignored, so CLI flags that were not given fall through to the file.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise FileNotFoundError(f"neutral reconstructor config {path} not found; pass --neutral-config PATH")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    known = {f.name for f in fields(NeutralConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    missing = sorted(known - set(data))
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    config = NeutralConfig(**data)
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


class NeutralReconstructor(nn.Module):
    """Standardiser + shared mask embedding + :class:`FeatureReconstructor`."""

    def __init__(self, dim: int, trunk: TrunkConfig, grid: tuple[int, int]) -> None:
        super().__init__()
        self.dim = dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.trunk_config = trunk
        self.standardize = FeatureStandardizer(dim)
        self.masked = MaskedSequence(dim)
        self.reconstructor = FeatureReconstructor(dim, trunk)

    def masked_input(self, features: Tensor, selection: TokenSelection) -> tuple[Tensor, Tensor]:
        """``(masked sequence (B, N, D), keep mask (B, N))``: selected tokens at their (representative) positions."""
        num_tokens = features.shape[1]
        tokens = self.standardize(selection.tokens.float()) * selection.valid[..., None]
        placed = torch.zeros(features.shape, dtype=torch.float32, device=features.device)
        placed.scatter_add_(1, selection.indices[..., None].expand(-1, -1, features.shape[-1]), tokens)
        keep_mask = selection.keep_mask(num_tokens)
        return self.masked(placed, keep_mask), keep_mask

    def unstandardize(self, standardised: Tensor) -> Tensor:
        """Standardised features back in the cache's units (to decode a ``pixels:P`` reconstruction)."""
        return standardised * self.standardize.std.to(standardised.dtype) + self.standardize.mean.to(standardised.dtype)

    def forward(self, features: Tensor, selection: TokenSelection, padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(prediction, target, keep_mask)``; prediction and target are standardised ``(B, N, D)``."""
        masked, keep_mask = self.masked_input(features, selection)
        grid = self.grid if self.grid[0] * self.grid[1] == features.shape[1] else None
        prediction = self.reconstructor(masked, grid, padding_mask)
        return prediction, self.standardize(features.float()), keep_mask


def cache_key(manifest: Manifest, config: NeutralConfig) -> dict[str, Any]:
    """What a cached neutral reconstructor must agree on to be reused (JSON-normalised)."""
    key = {
        "encoder": manifest.encoder,
        "layer": manifest.layer,
        "dim": manifest.dim,
        "grid": list(manifest.grid),
        "num_tokens": manifest.num_tokens,
        "training": asdict(config),
    }
    return json.loads(json.dumps(key))


def feature_statistics(cache: FeatureCache, indices: Sequence[int], max_samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std over all tokens of up to ``max_samples`` training images (float64 sums)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = list(indices)
    if len(chosen) > max_samples:
        chosen = sorted(chosen[i] for i in torch.randperm(len(chosen), generator=generator)[:max_samples].tolist())
    total = torch.zeros(cache.manifest.dim, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for start in range(0, len(chosen), 64):
        x = cache.read_many(chosen[start : start + 64])["features"].double().flatten(0, 1)
        total += x.sum(0)
        squares += (x * x).sum(0)
        count += x.shape[0]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def random_fraction_mask(batch: int, num_tokens: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``(B, N)`` uniformly random keep masks, each image keeping a fraction drawn from ``U(low, high)``."""
    fractions = low + (high - low) * torch.rand(batch, generator=generator)
    budgets = (fractions * num_tokens).round().long().clamp(1, num_tokens)
    ranks = torch.argsort(torch.argsort(torch.rand(batch, num_tokens, generator=generator), dim=1), dim=1)
    return ranks < budgets[:, None]


def train_neutral(
    cache: FeatureCache,
    indices: Sequence[int],
    config: NeutralConfig,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = logger.info,
) -> tuple[NeutralReconstructor, float]:
    """Train from scratch with a plain seeded AdamW loop; returns the model (eval mode) and the last loss."""
    if not indices:
        raise ValueError("cannot train the neutral reconstructor: no training images")
    m = cache.manifest
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = NeutralReconstructor(m.dim, config.trunk(), m.grid)
    model.standardize.set_statistics(*feature_statistics(cache, indices, config.stats_samples, config.seed))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    loss_value = float("nan")
    every = max(1, config.steps // 5)
    for step in range(config.steps):
        picks = torch.randint(len(indices), (config.batch_size,), generator=generator).tolist()
        features = cache.read_many([indices[i] for i in picks])["features"].float().to(device)
        keep = random_fraction_mask(features.shape[0], m.num_tokens, config.min_keep, config.max_keep, generator).to(device)
        target = model.standardize(features)
        prediction = model.reconstructor(model.masked(target, keep), m.grid)
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if (step + 1) % every == 0 or step + 1 == config.steps:
            log(f"neutral reconstructor step {step + 1}/{config.steps}: mse {loss_value:.4f}")
    return model.eval(), loss_value


def save_neutral(model: NeutralReconstructor, folder: Path, key: dict[str, Any], info: dict[str, Any]) -> Path:
    """Weights first, then ``config.json`` (the commit marker), both written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_NAME, save_bytes(state, metadata={"format": "pt"}))
    config = {
        "type": ARTEFACT_TYPE,
        "key": key,
        "dim": model.dim,
        "grid": list(model.grid),
        "trunk": asdict(model.trunk_config),
        "info": info,
    }
    atomic_write_bytes(folder / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return folder


def read_saved_key(folder: Path) -> dict[str, Any] | None:
    """The reuse key of a saved reconstructor, or ``None`` if the folder holds no valid one."""
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or config.get("type") != ARTEFACT_TYPE or not (folder / WEIGHTS_NAME).exists():
        return None
    return config.get("key")


def load_neutral(folder: str | Path, device: str | torch.device = "cpu") -> NeutralReconstructor:
    """Load a saved neutral reconstructor (no code executed: JSON + safetensors)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text())
    model = NeutralReconstructor(int(config["dim"]), TrunkConfig(**config["trunk"]), tuple(config["grid"]))
    try:
        model.load_state_dict(load_bytes((folder / WEIGHTS_NAME).read_bytes()))
    except RuntimeError as err:
        raise ValueError(f"{folder / WEIGHTS_NAME}: weights do not match {folder / CONFIG_NAME}: {err}") from err
    return model.to(device).eval()


def default_folder(cache: FeatureCache, fallback: Path | None) -> Path:
    """``<cache>/neutral_reconstructor``, or ``<fallback>/neutral_reconstructor`` when the cache folder is read-only."""
    if os.access(cache.root, os.W_OK) or fallback is None:
        return cache.root / DEFAULT_FOLDER_NAME
    folder = fallback / DEFAULT_FOLDER_NAME
    logger.warning("feature cache %s is read-only; keeping the neutral reconstructor in %s", cache.root, folder)
    return folder


def load_or_train_neutral(
    cache: FeatureCache,
    train_indices: Sequence[int],
    config: NeutralConfig,
    folder: str | Path | None = None,
    fallback_folder: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = logger.info,
) -> tuple[NeutralReconstructor, dict[str, Any]]:
    """Reuse the saved reconstructor when its key matches this cache and config, else train and save one.

    Returns the model and a summary ``{"path", "reused", "final_loss", "train_images"}``.
    """
    folder = Path(folder) if folder is not None else default_folder(cache, Path(fallback_folder) if fallback_folder else None)
    key = cache_key(cache.manifest, config)
    saved = read_saved_key(folder)
    if saved == key:
        log(f"reusing the neutral reconstructor in {folder}")
        model = load_neutral(folder, device)
        info = json.loads((folder / CONFIG_NAME).read_text()).get("info", {})
        return model, {"path": str(folder), "reused": True, **info}
    if saved is not None:
        changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
        log(f"the neutral reconstructor in {folder} was made for other settings ({', '.join(changed)}); retraining it")
    log(f"training the neutral reconstructor ({config.steps} steps on {len(train_indices)} images)")
    model, final_loss = train_neutral(cache, train_indices, config, device, log)
    info = {"final_loss": final_loss, "train_images": len(train_indices)}
    save_neutral(model, folder, key, info)
    return model, {"path": str(folder), "reused": False, **info}
