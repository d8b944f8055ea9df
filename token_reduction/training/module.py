"""The LightningModule: selector + shared mask embedding + reconstructor, trained without labels.

It owns the loop (Gumbel temperature schedule, loss, optimiser, metrics); the networks themselves
are plain modules in :mod:`token_reduction.models`. Validation reports the paper's central
comparison: reconstruction from the LEARNED selection vs a RANDOM one of the same size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection

from token_reduction.errors import CheckpointError
from token_reduction.evaluation.metrics import TEXT_COVERAGE_THRESHOLD
from token_reduction.training.losses import (
    LossConfig,
    error_prediction_term,
    masked_mean,
    reconstruction_terms,
    token_error,
    total_loss,
)
from token_reduction.models import FeatureReconstructor, MaskedSequence, TokenSelector, TrunkConfig
from token_reduction.models.selector import gumbel_keep_mask, gumbel_topk_mask
from token_reduction.selection.base import budgets_per_image, top_k_mask, valid_counts
from token_reduction.selection.random_selection import random_keep_mask
from token_reduction.training.resume import collect_rng_states, restore_rng_states, resume_train_loader



@dataclass
class GumbelConfig:
    """Gumbel-Softmax temperature, annealed from ``tau_start`` to ``tau_end`` over ``anneal_fraction`` of training."""

    tau_start: float = 1.0
    tau_end: float = 0.2
    anneal_fraction: float = 0.8
    schedule: str = "cosine"  # cosine | linear | exponential
    straight_through: bool = True  # False: the reconstruction loss does not reach the selector's logits


@dataclass
class BudgetTrainingConfig:
    """Share of batches trained at a random fixed budget (Gumbel top-k) instead of the adaptive mask.

    Budget batches teach the selector a good RANKING at every keep rate, which budget-mode
    inference relies on, and show the reconstructor every mask size. ``probability: 0`` is the
    paper's purely adaptive training.

    ``random_share`` of each batch's images get a uniformly random mask instead (budget drawn
    from the same range). The reconstructor then cannot co-adapt to one selection pattern and
    read content from WHERE tokens were dropped, which otherwise lets a selector drift to a
    content-blind, positional mask. ``0`` is the paper's setting.
    """

    probability: float = 0.5
    min_keep: float = 0.05
    max_keep: float = 0.9
    sampling: str = "uniform"  # uniform | log_uniform (more batches at small budgets)
    random_share: float = 0.0

    def __post_init__(self) -> None:
        """Fail at start-up, naming the field, rather than at a random training step."""
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"model.budget_training.probability must be in [0, 1], got {self.probability}")
        if not 0.0 < self.min_keep <= self.max_keep <= 1.0:
            raise ValueError(
                f"model.budget_training needs 0 < min_keep <= max_keep <= 1, got {self.min_keep} and {self.max_keep}"
            )
        if not 0.0 <= self.random_share <= 1.0:
            raise ValueError(f"model.budget_training.random_share must be in [0, 1], got {self.random_share}")
        if self.sampling not in ("uniform", "log_uniform"):
            raise ValueError(f"model.budget_training.sampling must be uniform|log_uniform, got {self.sampling!r}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.05


Config = TypeVar("Config")


def comparison_name(metric: str, fraction: float, method: str) -> str:
    """Metric key such as ``cosine@25%/learned`` (no dots: torch module names forbid them)."""
    percent = f"{fraction * 100:g}".replace(".", "p")
    return f"{metric}@{percent}%/{method}"


def _as(kind: type[Config], value: Any) -> Config:
    """Accept a config dataclass or its dict form (checkpoints store plain dicts: no pickled classes)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        return kind(**value)
    raise TypeError(f"expected {kind.__name__} or a dict, got {type(value).__name__}")


class TokenReductionModule(L.LightningModule):
    """Trains :class:`TokenSelector` and :class:`FeatureReconstructor` end to end on cached features."""

    def __init__(
        self,
        dim: int = 768,
        grid: tuple[int, int] = (14, 14),
        selector: TrunkConfig = TrunkConfig(),
        reconstructor: TrunkConfig = TrunkConfig(),
        loss: LossConfig = LossConfig(),
        gumbel: GumbelConfig = GumbelConfig(),
        budget_training: BudgetTrainingConfig = BudgetTrainingConfig(),
        optim: OptimConfig = OptimConfig(),
        threshold: float = 0.5,
        init_keep_logit: float = 2.0,
        eval_keep_fractions: tuple[float, ...] = (0.1, 0.25, 0.5),
        eval_seed: int = 1234,
        feature_source: str | None = None,
        redundancy: float = 0.0,
        duplicate_similarity: float | None = None,
    ) -> None:
        super().__init__()
        selector, reconstructor = _as(TrunkConfig, selector), _as(TrunkConfig, reconstructor)
        self.loss_config = _as(LossConfig, loss)
        if dim % self.loss_config.error_channel_groups:
            raise ValueError(
                f"model.loss.error_channel_groups={self.loss_config.error_channel_groups} does not divide the feature dim {dim}; "
                "use 3 for pixels:P caches and 1 for other encoders"
            )
        self.gumbel = _as(GumbelConfig, gumbel)
        self.budget_training = _as(BudgetTrainingConfig, budget_training)
        self.optim = _as(OptimConfig, optim)
        self.eval_keep_fractions = [float(f) for f in eval_keep_fractions]
        self.save_hyperparameters(
            {
                "dim": dim,
                "grid": list(grid),
                "selector": asdict(selector),
                "reconstructor": asdict(reconstructor),
                "loss": asdict(self.loss_config),
                "gumbel": asdict(self.gumbel),
                "budget_training": asdict(self.budget_training),
                "optim": asdict(self.optim),
                "threshold": threshold,
                "init_keep_logit": init_keep_logit,
                "eval_keep_fractions": self.eval_keep_fractions,
                "eval_seed": eval_seed,
                "feature_source": feature_source,
                "redundancy": redundancy,
                "duplicate_similarity": duplicate_similarity,
            }
        )
        self.grid = (int(grid[0]), int(grid[1]))
        self.selector = TokenSelector(
            dim, selector, grid=self.grid, threshold=threshold, init_keep_logit=init_keep_logit,
            redundancy=redundancy, duplicate_similarity=duplicate_similarity,
        )
        self.mask_embedding = MaskedSequence(dim)
        self.reconstructor = FeatureReconstructor(dim, reconstructor)
        self.register_buffer("statistics_ready", torch.tensor(False))
        self._rng_states_to_restore: dict[str, Any] | None = None  # from a checkpoint, applied in on_train_start
        self.eval_metrics = torch.nn.ModuleDict(
            {stage: MetricCollection(self._comparison_metrics()) for stage in ("val", "test")}
        )

    def set_eval_fractions(self, fractions: list[float] | tuple[float, ...]) -> None:
        """Compare learned vs random at other kept fractions from now on (e.g. a denser test sweep)."""
        self.eval_keep_fractions = [float(f) for f in fractions]
        device = self.selector.head.weight.device
        self.eval_metrics = torch.nn.ModuleDict(
            {stage: MetricCollection(self._comparison_metrics()) for stage in ("val", "test")}
        ).to(device)

    def _comparison_metrics(self) -> dict[str, MeanMetric]:
        metrics = {}
        for fraction in self.eval_keep_fractions:
            for method in ("learned", "random"):
                metrics[comparison_name("cosine", fraction, method)] = MeanMetric()
                metrics[comparison_name("text_recall", fraction, method)] = MeanMetric()
        return metrics

    # -------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        """Measure feature statistics on the training split once; they are saved with the weights."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if bool(self.statistics_ready) or datamodule is None or not hasattr(datamodule, "feature_statistics"):
            return
        mean, std = datamodule.feature_statistics()
        self.selector.standardize.set_statistics(mean, std)
        self.statistics_ready.fill_(True)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained for other features, naming the file and the field; keep its RNG states."""
        saved = checkpoint.get("hyper_parameters", {})
        source = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        expected = (("dim", self.hparams.dim), ("grid", list(self.hparams.grid)), ("feature_source", self.hparams.feature_source))
        for key, current in expected:
            value = saved.get(key)
            if value is not None and current is not None and (list(value) if key == "grid" else value) != current:
                raise CheckpointError(
                    source or "checkpoint", f"hyper_parameters.{key}",
                    f"is {value} but the data has {current}; it was trained on features of another encoder or layer: "
                    "use the cache (--data.cache_dir) it was trained on",
                )
        fitting = self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING
        self._rng_states_to_restore = checkpoint.get("rng_states") if fitting else None  # not for validate/test

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the generators' states: a resumed run then draws the same Gumbel noise as an uninterrupted one."""
        checkpoint["rng_states"] = collect_rng_states(self.device)

    def on_train_start(self) -> None:
        """On resume, continue the epoch's data where it stopped and restore the generators (see ``resume``)."""
        resume_train_loader(self.trainer)
        if self._rng_states_to_restore is not None:
            restore_rng_states(self._rng_states_to_restore, self.device)
            self._rng_states_to_restore = None

    # ------------------------------------------------------------------------------ training
    def temperature(self) -> float:
        cfg = self.gumbel
        steps = self.trainer.estimated_stepping_batches if self._trainer else 1
        total = max(1, int(steps * cfg.anneal_fraction)) if math.isfinite(steps) and steps > 0 else 1
        progress = min(1.0, self.global_step / total)
        if cfg.schedule == "linear":
            return cfg.tau_start + (cfg.tau_end - cfg.tau_start) * progress
        if cfg.schedule == "exponential":
            return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** progress
        if cfg.schedule == "cosine":
            return cfg.tau_end + (cfg.tau_start - cfg.tau_end) * 0.5 * (1 + math.cos(math.pi * progress))
        raise ValueError(f"model.gumbel.schedule must be cosine|linear|exponential, got {cfg.schedule!r}")

    def reconstruct(self, target: Tensor, keep_mask: Tensor) -> Tensor:
        """Reconstructor output for standardised ``target`` with dropped positions masked."""
        return self.reconstructor(self.mask_embedding(target, keep_mask), self.grid)

    def _random_fraction(self) -> float:
        """A training budget drawn from ``[min_keep, max_keep]``."""
        cfg = self.budget_training
        u = float(torch.rand(()))
        if cfg.sampling == "log_uniform":
            return cfg.min_keep * (cfg.max_keep / cfg.min_keep) ** u
        return cfg.min_keep + (cfg.max_keep - cfg.min_keep) * u

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        features = batch["features"]
        target = self.selector.standardize(features)
        logits = self.selector(features)
        tau = self.temperature()
        budget_cfg = self.budget_training
        mask_logits = logits if self.gumbel.straight_through else logits.detach()
        if budget_cfg.probability > 0 and torch.rand(()) < budget_cfg.probability:
            budgets = budgets_per_image(self._random_fraction(), valid_counts(features, None))
            keep_mask = gumbel_topk_mask(mask_logits, budgets, tau)
        else:
            keep_mask = gumbel_keep_mask(mask_logits, tau)
        num_random = round(budget_cfg.random_share * features.shape[0])
        if num_random:
            random_mask = random_keep_mask(features[:num_random], self._random_fraction()).to(keep_mask.dtype)
            keep_mask = torch.cat([random_mask, keep_mask[num_random:]])
        prediction = self.reconstruct(target, keep_mask)
        terms = total_loss(prediction, target, torch.sigmoid(logits), self.loss_config)
        if self.loss_config.error_weight > 0:
            terms.update(self._error_prediction(features, target, logits))
            terms["loss"] = terms["loss"] + self.loss_config.error_weight * terms["error"] + self.loss_config.mse_weight * terms["probe_mse"]
        kept = keep_mask.detach().mean(dim=1)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False, on_step=True, on_epoch=True)
        self.log("train/keep_rate", kept.mean(), prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/keep_rate_std", kept.std() if kept.numel() > 1 else kept.new_zeros(()), on_epoch=True)
        self.log("train/tau", tau, on_step=True, on_epoch=False)
        return terms["loss"]

    def _error_prediction(self, features: Tensor, target: Tensor, logits: Tensor) -> dict[str, Tensor]:
        """Reconstruct from a random mask; teach the selector each dropped token's error (see LossConfig)."""
        cfg = self.loss_config
        probe_mask = random_keep_mask(features, self._random_fraction())
        prediction = self.reconstruct(target, probe_mask.float())
        dropped = ~probe_mask
        mse = (prediction - target).pow(2).mean(dim=-1)
        error = token_error(prediction.detach(), target, cfg.error_channel_groups, cfg.error_colour_weight)
        return {
            "probe_mse": masked_mean(mse, dropped),
            "error": error_prediction_term(logits, error, dropped, cfg.error_tolerance),
        }

    # ---------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        features = batch["features"]
        target = self.selector.standardize(features)
        logits = self.selector(features)
        keep_prob = torch.sigmoid(logits)
        adaptive = (keep_prob >= self.selector.threshold).float()
        terms = total_loss(self.reconstruct(target, adaptive), target, keep_prob, self.loss_config)
        kept = adaptive.mean(dim=1)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, sync_dist=True, prog_bar=False)
        self.log(f"{stage}/keep_rate", kept.mean(), sync_dist=True, prog_bar=True)
        self.log(f"{stage}/keep_rate_std", kept.std() if kept.numel() > 1 else kept.new_zeros(()), sync_dist=True)

        metrics = self.eval_metrics[stage]
        text = batch.get("text")
        generator = torch.Generator().manual_seed(self.hparams.eval_seed + int(batch["index"][0]))
        for fraction in self.eval_keep_fractions:
            budgets = budgets_per_image(fraction, valid_counts(features, None))
            masks = {"learned": top_k_mask(logits, budgets), "random": random_keep_mask(features, fraction, generator=generator)}
            for method, mask in masks.items():
                cosine = reconstruction_terms(self.reconstruct(target, mask.float()), target)["cosine"]
                metrics[comparison_name("cosine", fraction, method)].update(cosine, weight=features.shape[0])
                if text is not None:
                    # Updated on every batch (weight 0 without text) so all DDP ranks sync the same metrics.
                    is_text = text >= TEXT_COVERAGE_THRESHOLD
                    recall = (mask & is_text).sum() / is_text.sum().clamp_min(1)
                    metrics[comparison_name("text_recall", fraction, method)].update(recall, weight=is_text.sum())
        return {"loss": terms["loss"], "keep_mask": adaptive.detach(), "keep_prob": keep_prob.detach()}

    def _log_comparison(self, stage: str) -> None:
        metrics = self.eval_metrics[stage]
        values = {}
        for name, metric in metrics.items():
            if metric.update_called:  # the same on every rank: each rank sees the same number of batches
                value = metric.compute()  # synced across ranks; NaN when no rank saw a text patch
                if torch.isfinite(value):
                    values[f"{stage}/{name}"] = value
        self.log_dict(values, sync_dist=False)
        metrics.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_comparison("val")

    def on_test_epoch_end(self) -> None:
        self._log_comparison("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-image keep probabilities and adaptive keep counts, for analysis."""
        keep_prob = self.selector.keep_probability(batch["features"])
        return {"index": batch["index"], "keep_prob": keep_prob, "kept": (keep_prob >= self.selector.threshold).sum(dim=1)}

    # ----------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict:
        cfg = self.optim
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            (no_decay if param.ndim < 2 or "embedding" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=tuple(cfg.betas),
        )
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            raise ValueError(
                "the LR and Gumbel schedules need a finite training length: set trainer.max_epochs or trainer.max_steps"
            )
        total = max(1, int(total))
        warmup = max(1, int(total * cfg.warmup_fraction))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
