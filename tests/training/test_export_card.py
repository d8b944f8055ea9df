"""Exports after fit and from a checkpoint carry provenance and a model card; --push-to-hub uploads that folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import lightning as L
import pytest
from huggingface_hub import ModelCard
from lightning.pytorch.callbacks import ModelCheckpoint

from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.cli import main
from token_reduction.models import TokenSelector, TrunkConfig
from token_reduction.training.callbacks import ExportSelector
from token_reduction.training.export import held_out_metrics
from token_reduction.training.module import TokenReductionModule

TRUNK = TrunkConfig(width=16, depth=1, heads=2, mlp_ratio=2.0)


@pytest.fixture()
def fitted(synthetic_cache: Path, tmp_path: Path) -> tuple[Path, Path]:
    """One tiny fit with ExportSelector: (its exported folder, its last.ckpt)."""
    L.seed_everything(0)
    data = FeatureCacheDataModule(str(synthetic_cache), batch_size=8)
    module = TokenReductionModule(
        dim=data.feature_dim, grid=data.grid, selector=TRUNK, reconstructor=TRUNK,
        eval_keep_fractions=(0.25,), feature_source=data.feature_source, redundancy=0.5,
    )
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_last=True)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[checkpoints, ExportSelector(str(tmp_path / "selector"))],
    )
    trainer.fit(module, data)
    return tmp_path / "selector", tmp_path / "ckpt" / "last.ckpt"


def test_export_after_fit_writes_a_card_with_data_and_held_out_metrics(fitted: tuple[Path, Path], synthetic_cache: Path) -> None:
    folder, _ = fitted
    selector = TokenSelector.from_pretrained(folder)
    assert selector.info["feature_source"] == "synthetic@layerNone" and selector.redundancy == 0.5
    assert selector.info["data"]["cache_dir"] == str(synthetic_cache) and selector.info["data"]["samples"]["train"] > 0
    assert "val/loss" in selector.info["metrics"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "token_reduction"
    assert "Encoder: `synthetic`" in card.text and "4 x 4 grid" in card.text and "| `val/loss` |" in card.text


def test_export_command_records_the_checkpoint_and_pushes_the_same_folder(
    fitted: tuple[Path, Path], synthetic_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, last = fitted
    uploads: list[tuple[str, str | None]] = []

    class FakeApi:  # stands in for the network; the rest of push_to_hub is the library's
        def __init__(self, token: str | None = None) -> None:
            pass

        def create_repo(self, repo_id: str, private: bool | None = None, exist_ok: bool = False) -> object:
            assert exist_ok and private is True
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id: str, folder_path: Path, revision: str | None = None, **kwargs) -> str:
            shutil.copytree(folder_path, tmp_path / "uploaded")
            uploads.append((repo_id, revision))
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    out = tmp_path / "exported"
    argv = ["export", "--ckpt", str(last), "--out", str(out), "--push-to-hub", "someone/sel", "--private", "--branch", "dev"]
    assert main(argv) == 0
    assert uploads == [("someone/sel", "dev")]
    local, pushed = TokenSelector.from_pretrained(out), TokenSelector.from_pretrained(tmp_path / "uploaded")
    assert local.info == pushed.info and local.info["source"] == str(last)
    assert local.info["data"] == {"cache_dir": str(synthetic_cache), "samples": {"cached": 48}}
    assert set(local.info["metrics"]) == {"val/loss"} and "last.ckpt" in local.info["metrics_note"]
    assert 'from_pretrained("someone/sel")' in (tmp_path / "uploaded" / "README.md").read_text()
    assert "48 cached" in ModelCard.load(out / "README.md").text


def test_push_errors_are_one_line(
    fitted: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, last = fitted
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the repo id is refused before any request
    assert main(["export", "--ckpt", str(last), "--out", str(tmp_path / "x"), "--push-to-hub", "not a repo"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--push-to-hub: 'not a repo' is not a Hub repo id" in lines[0]


def test_held_out_metrics_keep_finite_validation_and_test_scalars() -> None:
    import torch

    logged = {"val/loss": torch.tensor(0.5), "train/loss": 1.0, "test/x": float("nan"), "val/vector": torch.ones(2), "test/y": 2}
    assert held_out_metrics(logged) == {"val/loss": 0.5, "test/y": 2.0}
