"""Shared fixtures for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthetic import write_synthetic_cache


@pytest.fixture()
def synthetic_cache(tmp_path: Path) -> Path:
    return write_synthetic_cache(tmp_path / "cache")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
