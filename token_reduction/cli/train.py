"""``token-reduction fit|validate|test|predict``: LightningCLI over the model and the feature-cache DataModule."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.resources import find_config
from token_reduction.training.checkpoints import check_checkpoint_path
from token_reduction.training.module import TokenReductionModule

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class TokenReductionCLI(LightningCLI):
    """Links the cache's feature dim, token grid and source (encoder, layer) into the model, so nobody types them twice."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.link_arguments("data.feature_dim", "model.dim", apply_on="instantiate")
        parser.link_arguments("data.grid", "model.grid", apply_on="instantiate")
        parser.link_arguments("data.feature_source", "model.feature_source", apply_on="instantiate")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then read ``--ckpt_path`` once, so that a missing or truncated checkpoint is named before any work."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_checkpoint_path(self.config[subcommand].get("ckpt_path"))


def resolve_config_names(args: list[str]) -> list[str]:
    """Turn ``--config NAME`` (a shipped config such as ``demo`` or ``trainer/multinode``) into its path."""
    resolved = list(args)
    for i, arg in enumerate(resolved):
        if arg == "--config" and i + 1 < len(resolved):
            resolved[i + 1] = str(find_config(resolved[i + 1]))
        elif arg.startswith("--config="):
            resolved[i] = "--config=" + str(find_config(arg.split("=", 1)[1]))
    return resolved


def lightning_main(args: list[str] | None = None) -> TokenReductionCLI:
    """Run LightningCLI; parse errors raise ``jsonargparse.ArgumentError`` for the caller to print in one line."""
    args = resolve_config_names(sys.argv[1:] if args is None else args)
    # We pass argv ourselves (config names resolved), which LightningCLI warns about when sys.argv is set;
    # and "Seed set to 0" is in the saved config.yaml, not worth a line before an error.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    strict = {"exit_on_error": False}
    return TokenReductionCLI(
        TokenReductionModule,
        FeatureCacheDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**strict, **{name: dict(strict) for name in SUBCOMMANDS}},
        args=args,
    )
