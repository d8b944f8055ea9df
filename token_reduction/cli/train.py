"""``token-reduction fit|validate|test|predict``: LightningCLI over the model and the feature-cache DataModule."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.training.module import TokenReductionModule


class TokenReductionCLI(LightningCLI):
    """Links the cache's feature dim, token grid and source (encoder, layer) into the model, so nobody types them twice."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 (jsonargparse parser)
        parser.link_arguments("data.feature_dim", "model.dim", apply_on="instantiate")
        parser.link_arguments("data.grid", "model.grid", apply_on="instantiate")
        parser.link_arguments("data.feature_source", "model.feature_source", apply_on="instantiate")


def lightning_main(args: list[str] | None = None) -> TokenReductionCLI:
    return TokenReductionCLI(
        TokenReductionModule,
        FeatureCacheDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
