"""The LightningCLI entry points, driven exactly as a user would drive them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from token_reduction.cli import main
from token_reduction.cli.train import lightning_main
from token_reduction.models import TokenSelector

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([*(ROOT / "lightning_configs").glob("*.yaml"), *(ROOT / "lightning_configs" / "trainer").glob("*.yaml")])
TINY = str(ROOT / "lightning_configs" / "tiny_cpu.yaml")


def run_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config", TINY,
        "--data.cache_dir", str(cache),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "lightning_configs")))
def test_every_shipped_config_parses(config: Path, synthetic_cache: Path) -> None:
    """Each YAML (alone, or on top of the tiny config for trainer presets) yields a valid fit config."""
    configs = [str(config)] if "trainer" not in config.parts else [TINY, str(config)]
    args = ["fit", *sum((["--config", c] for c in configs), []), "--data.cache_dir", str(synthetic_cache), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        lightning_main(args)
    assert exit_info.value.code == 0
    assert yaml.safe_load(config.read_text())  # and every key is commented YAML, not empty


def test_fit_validate_test_predict_with_fast_dev_run(synthetic_cache: Path, tmp_path: Path) -> None:
    for stage in ("fit", "validate", "test", "predict"):
        cli = lightning_main([stage, *run_args(synthetic_cache, tmp_path / stage, "--trainer.fast_dev_run", "true")])
        assert cli.model.hparams.dim == 16 and tuple(cli.model.hparams.grid) == (4, 4)  # linked from the manifest
        if stage == "test":
            assert cli.trainer.callback_metrics["test/loss"] > 0
    predictions = cli.trainer.predict_loop.predictions
    assert predictions and predictions[0]["keep_prob"].shape[1:] == (16,)


def test_fit_writes_checkpoint_tensorboard_and_exported_selector(synthetic_cache: Path, tmp_path: Path) -> None:
    cli = lightning_main(["fit", *run_args(synthetic_cache, tmp_path, "--trainer.max_epochs", "2")])
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "checkpoints" / "last.ckpt").exists()
    assert list(log_dir.glob("events.out.tfevents.*"))
    selector = TokenSelector.from_pretrained(log_dir / "selector")
    assert selector.dim == 16 and selector.info["feature_source"] == "synthetic@layerNone"
    metrics = cli.trainer.callback_metrics
    assert {"val/cosine@25%/learned", "val/cosine@25%/random", "train/sparsity", "train/mse"} <= set(metrics)


def test_resume_from_last_checkpoint_via_cli(synthetic_cache: Path, tmp_path: Path) -> None:
    first = lightning_main(["fit", *run_args(synthetic_cache, tmp_path, "--trainer.max_epochs", "1")])
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    steps = first.trainer.global_step
    resumed = lightning_main(["fit", *run_args(synthetic_cache, tmp_path, "--trainer.max_epochs", "2"), "--ckpt_path", str(last)])
    assert resumed.trainer.global_step == 2 * steps
    assert resumed.trainer.current_epoch == 2


def test_checkpoint_for_other_features_is_refused(synthetic_cache: Path, tmp_path: Path) -> None:
    from synthetic import write_synthetic_cache

    first = lightning_main(["fit", *run_args(synthetic_cache, tmp_path / "a", "--trainer.max_epochs", "1")])
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    other = write_synthetic_cache(tmp_path / "other", dim=24)
    with pytest.raises(ValueError, match=r"last.ckpt: hyper_parameters.dim: is 16 but the data has 24"):
        lightning_main(["fit", *run_args(other, tmp_path / "b", "--trainer.max_epochs", "2"), "--ckpt_path", str(last)])
    same_shape = write_synthetic_cache(tmp_path / "same_shape", encoder="other-encoder")
    with pytest.raises(ValueError, match=r"hyper_parameters.feature_source: is synthetic@layerNone but the data has other-encoder@layerNone"):
        lightning_main(["fit", *run_args(same_shape, tmp_path / "c", "--trainer.max_epochs", "2"), "--ckpt_path", str(last)])


def test_export_command_writes_a_loadable_selector(synthetic_cache: Path, tmp_path: Path) -> None:
    first = lightning_main(["fit", *run_args(synthetic_cache, tmp_path, "--trainer.max_epochs", "1")])
    last = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert main(["export", "--ckpt", str(last), "--out", str(tmp_path / "exported")]) == 0
    exported = TokenSelector.from_pretrained(tmp_path / "exported")
    state = first.model.selector.state_dict()
    assert all((exported.state_dict()[k] == v).all() for k, v in state.items())


def test_help_lists_the_tools(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("extract", "demo", "evaluate", "export", "chat", "fit"))


def test_impossible_budget_range_is_refused_at_start_naming_the_field(synthetic_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model.budget_training needs 0 < min_keep <= max_keep <= 1"):
        lightning_main(["fit", *run_args(synthetic_cache, tmp_path, "--model.budget_training.max_keep", "1.5")])
