"""Checkpoints: last.ckpt is always the final epoch, and a resumed run is the uninterrupted run, step for step."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.cli.train import lightning_main
from token_reduction.models import TrunkConfig
from token_reduction.training.losses import LossConfig
from token_reduction.training.module import BudgetTrainingConfig, OptimConfig, TokenReductionModule
from token_reduction.training.resume import collect_rng_states, restore_rng_states

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "lightning_configs" / "tiny_cpu.yaml")
TRUNK = TrunkConfig(width=32, depth=1, heads=2, mlp_ratio=2.0)


def test_last_checkpoint_holds_the_final_epoch_when_validation_loss_never_improves(synthetic_cache: Path, tmp_path: Path) -> None:
    """lr 0 freezes the weights, so val/loss never improves after epoch 0: last.ckpt must still be the final epoch.

    A ModelCheckpoint that monitors val/loss with save_last (the old config, added here in its
    own folder) shows the trap: Lightning 2.6 rewrites its last.ckpt only when it saves a new best.
    """
    old_style = tmp_path / "monitored"
    cli = lightning_main([
        "fit", "--config", TINY,
        "--data.cache_dir", str(synthetic_cache), "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "3",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--model.optim.lr", "0",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.monitor=val/loss", "--trainer.callbacks.save_last=true", f"--trainer.callbacks.dirpath={old_style}",
    ])
    assert torch.load(old_style / "last.ckpt", weights_only=True)["epoch"] == 0  # val/loss never improved after epoch 0
    checkpoints = Path(cli.trainer.log_dir) / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6) == (cli.trainer.current_epoch - 1, cli.trainer.global_step)
    assert (checkpoints / "epoch02.ckpt").exists() and not (checkpoints / "epoch01.ckpt").exists()
    assert len(list(checkpoints.glob("best-epoch*-cos25-*.ckpt"))) == 1  # the best by cosine at 25% kept


class CrashAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class StepRecorder(L.Callback):
    """(global_step, loss, sample indices) of every optimiser step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, list[int]]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: dict, batch: dict, batch_idx: int) -> None:
        self.steps.append((trainer.global_step, float(outputs["loss"]), batch["index"].tolist()))


def make_module(data: FeatureCacheDataModule) -> TokenReductionModule:
    """Budget batches on: every step draws budgets and Gumbel noise from the global generator."""
    return TokenReductionModule(
        dim=data.feature_dim, grid=data.grid, selector=TRUNK, reconstructor=TRUNK,
        loss=LossConfig(sparsity_weight=0.1), budget_training=BudgetTrainingConfig(probability=0.5),
        optim=OptimConfig(lr=5e-3), init_keep_logit=0.5, eval_keep_fractions=(0.25,),
    )


def fit(root: Path, data: FeatureCacheDataModule, module: TokenReductionModule, callbacks: list, ckpt_path: Path | None = None) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, max_epochs=2, limit_val_batches=2, callbacks=callbacks,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("crash_step, every_n_steps", [(17, 3), (10, None)], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_run_matches_the_uninterrupted_run(
    synthetic_cache: Path, tmp_path: Path, num_workers: int, crash_step: int, every_n_steps: int | None
) -> None:
    """Crash, resume from last.ckpt: same batches in the same order, same losses, same final weights."""

    def data() -> FeatureCacheDataModule:
        return FeatureCacheDataModule(str(synthetic_cache), batch_size=4, num_workers=num_workers)  # 10 steps per epoch

    L.seed_everything(0)
    reference, reference_module = StepRecorder(), make_module(data())
    fit(tmp_path / "reference", data(), reference_module, [reference])

    L.seed_everything(0)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every_n_steps, save_last=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "crashed", data(), make_module(data()), [checkpoints, CrashAt(crash_step)])
    last = tmp_path / "ckpt" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True)["global_step"]  # loads without pickled code
    assert saved_step == (15 if every_n_steps else 10)  # epoch 1, batch 5 | the end of epoch 0

    torch.manual_seed(123)  # a different global generator state: the checkpoint must bring back its own
    resumed, resumed_module = StepRecorder(), make_module(data())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path / "resumed", data(), resumed_module, [resumed], ckpt_path=last)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert resumed.steps == [step for step in reference.steps if step[0] > saved_step]
    final, expected = resumed_module.state_dict(), reference_module.state_dict()
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def test_rng_states_survive_a_weights_only_checkpoint() -> None:
    states = collect_rng_states(torch.device("cpu"))
    buffer = io.BytesIO()
    torch.save({"rng_states": states}, buffer)
    expected = (torch.rand(4), np.random.rand(3), random.random())
    buffer.seek(0)
    restore_rng_states(torch.load(buffer, weights_only=True)["rng_states"])
    again = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(again[0], expected[0]) and np.array_equal(again[1], expected[1]) and again[2] == expected[2]
