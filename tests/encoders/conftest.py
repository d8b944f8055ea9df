"""Tiny CLIP / SigLIP towers saved once per session and shared by the encoder tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import save_tiny_clip, save_tiny_siglip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")
