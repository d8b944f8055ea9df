"""Training behaviour: the sparsity weight controls the keep rate, DDP splits data."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from synthetic import IndexRecorder, write_synthetic_cache
from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.training.module import BudgetTrainingConfig, OptimConfig, TokenReductionModule
from token_reduction.training.losses import LossConfig
from token_reduction.models import TrunkConfig

TRUNK = TrunkConfig(width=32, depth=1, heads=2, mlp_ratio=2.0)


def make_module(data: FeatureCacheDataModule, sparsity: float = 0.1, budget_probability: float = 0.0) -> TokenReductionModule:
    return TokenReductionModule(
        dim=data.feature_dim,
        grid=data.grid,
        selector=TRUNK,
        reconstructor=TRUNK,
        loss=LossConfig(sparsity_weight=sparsity),
        budget_training=BudgetTrainingConfig(probability=budget_probability),
        optim=OptimConfig(lr=5e-3),
        init_keep_logit=0.5,
        eval_keep_fractions=(0.25,),
    )


def make_trainer(root: Path, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    options.update(kwargs)
    return L.Trainer(**options)


def adaptive_keep_rate(module: TokenReductionModule, data: FeatureCacheDataModule) -> float:
    module.eval()
    with torch.no_grad():
        features = data.cache.read_many(data.split_indices["train"])["features"].float()
        return float((module.selector.keep_probability(features) >= 0.5).float().mean())


def test_keep_rate_falls_as_sparsity_weight_rises(synthetic_cache: Path, tmp_path: Path) -> None:
    rates = []
    for weight in (0.0, 3.0):
        L.seed_everything(0)
        data = FeatureCacheDataModule(str(synthetic_cache), batch_size=8)
        module = make_module(data, sparsity=weight)
        make_trainer(tmp_path / str(weight), max_epochs=8, enable_checkpointing=False, limit_val_batches=0).fit(module, data)
        rates.append(adaptive_keep_rate(module, data))
    assert rates[1] < rates[0] - 0.2, rates


def test_training_improves_on_random_selection(synthetic_cache: Path, tmp_path: Path) -> None:
    """On data with unpredictable 'detail' tokens the learned selection must beat random."""
    L.seed_everything(0)
    data = FeatureCacheDataModule(str(synthetic_cache), batch_size=8, val_fraction=0.25)
    module = make_module(data, sparsity=0.3, budget_probability=0.5)
    trainer = make_trainer(tmp_path, max_epochs=12, enable_checkpointing=False)
    trainer.fit(module, data)
    metrics = trainer.validate(module, data, verbose=False)[0]
    assert metrics["val/text_recall@25%/learned"] > metrics["val/text_recall@25%/random"] + 0.2
    assert metrics["val/cosine@25%/learned"] > metrics["val/cosine@25%/random"]


# Crash and resume: tests/training/test_checkpointing.py (the resumed run equals the uninterrupted one).


def test_ddp_two_cpu_processes_see_disjoint_equal_shares(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "cache", num_images=40, shard_size=8)
    data = FeatureCacheDataModule(str(cache), batch_size=4, val_fraction=0.0)
    trainer = make_trainer(
        tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1, limit_val_batches=0,
        enable_checkpointing=False, callbacks=[IndexRecorder(str(tmp_path / "seen"))],
    )
    trainer.fit(make_module(data), data)
    shares = [set(map(int, (tmp_path / "seen" / f"rank{r}-epoch0.txt").read_text().split())) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 20
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(data.split_indices["train"])


class GradientProbe(L.Callback):
    """Remembers which parameter groups received a nonzero gradient in the first backward pass."""

    def __init__(self) -> None:
        self.nonzero: dict[str, bool] = {}

    def on_after_backward(self, trainer: L.Trainer, pl_module: TokenReductionModule) -> None:
        if not self.nonzero:
            for name in ("selector", "reconstructor"):
                params = getattr(pl_module, name).parameters()
                self.nonzero[name] = any(p.grad is not None and bool(p.grad.any()) for p in params)


def test_random_share_trains_the_reconstructor_on_masks_the_selector_did_not_choose(synthetic_cache: Path, tmp_path: Path) -> None:
    data = FeatureCacheDataModule(str(synthetic_cache), batch_size=8)
    module = TokenReductionModule(
        dim=data.feature_dim, grid=data.grid, selector=TRUNK, reconstructor=TRUNK,
        loss=LossConfig(sparsity_weight=0.0),
        budget_training=BudgetTrainingConfig(probability=0.0, random_share=1.0),
    )
    probe = GradientProbe()
    make_trainer(tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=False, callbacks=[probe]).fit(module, data)
    assert probe.nonzero == {"selector": False, "reconstructor": True}


def test_error_prediction_alone_teaches_the_selector_which_tokens_context_cannot_restore(synthetic_cache: Path, tmp_path: Path) -> None:
    """With the reconstruction gradient cut (straight_through off), the error-prediction term alone must rank detail first."""
    from token_reduction.training.module import GumbelConfig

    L.seed_everything(0)
    data = FeatureCacheDataModule(str(synthetic_cache), batch_size=8, val_fraction=0.25)
    module = TokenReductionModule(
        dim=data.feature_dim, grid=data.grid, selector=TRUNK, reconstructor=TRUNK,
        loss=LossConfig(sparsity_weight=0.0, error_weight=1.0), gumbel=GumbelConfig(straight_through=False),
        optim=OptimConfig(lr=5e-3), eval_keep_fractions=(0.25,),
    )
    trainer = make_trainer(tmp_path, max_epochs=12, enable_checkpointing=False)
    trainer.fit(module, data)
    logged = dict(trainer.callback_metrics)
    assert "train/error_epoch" in logged and "train/probe_mse_epoch" in logged  # both terms are logged
    metrics = trainer.validate(module, data, verbose=False)[0]
    assert metrics["val/text_recall@25%/learned"] > metrics["val/text_recall@25%/random"] + 0.2


def test_token_error_separates_colour_from_structure() -> None:
    from token_reduction.training.losses import error_prediction_term, token_error

    target = torch.zeros(1, 2, 6)
    prediction = target.clone()
    prediction[0, 0] = 1.0  # token 0: a wrong flat colour
    prediction[0, 1, ::2] = 1.0  # token 1: wrong structure, same mean error
    plain = token_error(prediction, target)
    assert plain[0, 0] == pytest.approx(1.0) and plain[0, 1] == pytest.approx(0.5)
    cheap_colour = token_error(prediction, target, groups=3, colour_weight=0.0)
    assert cheap_colour[0, 0] == pytest.approx(0.0) and cheap_colour[0, 1] == pytest.approx(0.25)
    dropped = torch.tensor([[True, False]])
    logits = torch.log(torch.tensor([[1.0, 0.5]]) / 0.1)
    assert error_prediction_term(logits, plain, dropped, 0.1) == pytest.approx(0.0, abs=1e-6)
    assert error_prediction_term(logits + 1.0, plain, dropped, 0.1) == pytest.approx(1.0)


def test_error_settings_are_checked_at_start_up_naming_the_field() -> None:
    with pytest.raises(ValueError, match="model.loss.error_tolerance"):
        LossConfig(error_tolerance=0.0)
    with pytest.raises(ValueError, match="model.loss.error_channel_groups"):
        LossConfig(error_channel_groups=0)
    with pytest.raises(ValueError, match="error_channel_groups=3 does not divide the feature dim 16"):
        TokenReductionModule(dim=16, grid=(4, 4), selector=TRUNK, reconstructor=TRUNK, loss=LossConfig(error_channel_groups=3))
