"""``lightning_configs/trainer/multinode.yaml``: parses on top of a model config and runs (2 CPU processes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from synthetic import write_synthetic_cache

from token_reduction.cli.train import lightning_main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "lightning_configs" / "tiny_cpu.yaml")
MULTINODE = ROOT / "lightning_configs" / "trainer" / "multinode.yaml"


def test_every_key_is_set_and_commented() -> None:
    trainer = yaml.safe_load(MULTINODE.read_text())["trainer"]
    assert trainer == {
        "accelerator": "gpu", "devices": 8, "num_nodes": 2, "strategy": "ddp", "precision": "bf16-mixed",
        "accumulate_grad_batches": 1, "sync_batchnorm": False, "use_distributed_sampler": True,
    }
    keys = [line for line in MULTINODE.read_text().splitlines() if re.match(r"^\s+\w+:", line)]
    assert len(keys) == len(trainer) and all("#" in line for line in keys)


def test_preset_parses_on_top_of_a_model_config(synthetic_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--config", TINY, "--config", str(MULTINODE), "--data.cache_dir", str(synthetic_cache), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        lightning_main(args)
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == ("gpu", 8, 2, "ddp")
    assert trainer["precision"] == "bf16-mixed" and trainer["max_epochs"] == 8  # the model config's other keys survive
    assert config["model"]["selector"]["width"] == 64


def preset_args(cache: Path, out: Path, *extra: str) -> list[str]:
    """The model config plus the multi-node preset, with only the hardware overridden: 1 node, 2 gloo processes, fp32."""
    return [
        "fit", "--config", TINY, "--config", str(MULTINODE),
        "--data.cache_dir", str(cache), "--data.batch_size", "8",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.num_nodes", "1",
        "--trainer.strategy", "ddp_spawn", "--trainer.precision", "32",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        *extra,
    ]


def test_two_cpu_processes_train_through_the_preset(tmp_path: Path) -> None:
    cache = write_synthetic_cache(tmp_path / "cache", num_images=48, shard_size=8)
    seen = tmp_path / "seen"
    callbacks = [  # the model config's callbacks plus a recorder of what each rank saw
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        {"class_path": "token_reduction.training.callbacks.KeepMaskImages"},
        {"class_path": "token_reduction.training.callbacks.ExportSelector"},  # rank 0 exports; the others must not hang
        {"class_path": "synthetic.IndexRecorder", "init_args": {"out": str(seen)}},
    ]
    cli = lightning_main(preset_args(
        cache, tmp_path / "run", "--trainer.accumulate_grad_batches", "2", "--trainer.max_steps", "2",
        "--trainer.callbacks", json.dumps(callbacks),
    ))
    assert cli.trainer.num_nodes == 1 and cli.trainer.accumulate_grad_batches == 2
    (last,) = (tmp_path / "run").rglob("last.ckpt")  # the workers' log dir (the main process would pick a new version)
    assert torch.load(last, weights_only=True)["global_step"] == 2  # 2 optimiser steps of 2 accumulated batches each
    shares = [set(map(int, (seen / f"rank{rank}-epoch0.txt").read_text().split())) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == 16 and not shares[0] & shares[1]  # 2 batches of 8 per rank, disjoint
    assert list((tmp_path / "run").rglob("selector/model.safetensors"))
