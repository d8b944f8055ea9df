"""Selector trunks the benchmarks time: the shipped default, the paper's, and the candidates between.

The default is read from the shipped SigLIP config, so every benchmark measures the selector users
actually train (``lightning_configs/siglip_so400m_384.yaml``; the CLIP config carries the same trunk).
"""

from __future__ import annotations

from typing import Any

import torch

from token_reduction.models.backbone import TrunkConfig

PAPER = TrunkConfig(width=None, depth=3, heads=16, mlp_ratio=4.0)  # width = the feature dim
VARIANTS: dict[str, TrunkConfig] = {
    "paper": PAPER,
    "w512d3": TrunkConfig(width=512, depth=3, heads=8, mlp_ratio=4.0),
    "w384d3": TrunkConfig(width=384, depth=3, heads=8, mlp_ratio=4.0),
    "w256d3": TrunkConfig(width=256, depth=3, heads=8, mlp_ratio=4.0),
    "w256d2": TrunkConfig(width=256, depth=2, heads=8, mlp_ratio=4.0),
    "w128d2": TrunkConfig(width=128, depth=2, heads=4, mlp_ratio=4.0),
    "demo": TrunkConfig(width=96, depth=2, heads=4, mlp_ratio=2.0),
}


def default_trunk(config: str = "siglip_so400m_384") -> TrunkConfig:
    """The selector trunk of a shipped config (``model.selector``)."""
    import yaml

    from token_reduction.resources import find_config

    return TrunkConfig(**yaml.safe_load(find_config(config).read_text())["model"]["selector"])


def shipped_key() -> str | None:
    """Which of :data:`VARIANTS` the shipped configs use (``None`` if none of them)."""
    shipped = default_trunk()
    for key, trunk in VARIANTS.items():
        if (trunk.width, trunk.depth, trunk.mlp_ratio) == (shipped.width, shipped.depth, shipped.mlp_ratio):
            return key
    return None


def toy(trunk: TrunkConfig) -> TrunkConfig:
    """The same trunk at smoke-run size: width 16 (the paper's stays the feature dim), 4 heads, same depth."""
    return TrunkConfig(width=16 if trunk.width else None, depth=trunk.depth, heads=4, mlp_ratio=trunk.mlp_ratio)


def make_selector(trunk: TrunkConfig, dim: int, device: torch.device, dtype: torch.dtype, tiny: bool = False) -> Any:
    """A random-weight ``TokenSelector`` with ``trunk`` (``tiny``: width 16 unless it is the paper's, for smoke runs)."""
    from token_reduction.models.selector import TokenSelector

    if tiny:
        trunk = toy(trunk)
    torch.manual_seed(0)
    return TokenSelector(dim, trunk).to(device, dtype).eval()
