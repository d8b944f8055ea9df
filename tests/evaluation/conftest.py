"""Fixtures for evaluation tests: a tiny synthetic cache and a tiny exported selector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluation.eval_synthetic import EVAL_DIM, EVAL_GRID, TINY_NEUTRAL, write_eval_cache
from token_reduction.models.backbone import TrunkConfig
from token_reduction.models.selector import TokenSelector


@pytest.fixture
def tiny_neutral() -> dict:
    return dict(TINY_NEUTRAL)


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_cache(tmp_path_factory.mktemp("eval") / "cache")


@pytest.fixture(scope="session")
def tiny_selector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported selector with non-constant scores, so adaptive counts vary by image."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        selector = TokenSelector(EVAL_DIM, TrunkConfig(width=8, depth=1, heads=2), grid=EVAL_GRID, init_keep_logit=0.0)
        torch.nn.init.normal_(selector.head.weight, std=2.0)
    return selector.save_pretrained(tmp_path_factory.mktemp("selector") / "exported")
