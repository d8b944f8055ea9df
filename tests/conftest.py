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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny tensors: extra intra-op threads only contend for the 2 cores (up to 100x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
