"""A tiny synthetic feature cache for evaluation tests, written with the real CacheWriter (importable by tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from token_reduction.cache.feature_cache import CacheWriter
from token_reduction.cache.manifest import Manifest

EVAL_GRID = (4, 4)
EVAL_DIM = 8
TINY_NEUTRAL = {"width": 16, "depth": 1, "heads": 2, "steps": 20, "batch_size": 4, "stats_samples": 64}
"""Overrides that make the neutral reconstructor train in well under a second."""


def write_eval_cache(root: Path, attention: bool = False, num_images: int = 24, splits: bool = True) -> Path:
    """Photos (smooth, no text) and documents (a text band of distinct tokens), split train/test."""
    generator = torch.Generator().manual_seed(0)
    n = EVAL_GRID[0] * EVAL_GRID[1]
    extras = {"text": [n]} | ({"attention": [n]} if attention else {})
    template = Manifest(encoder="synthetic", layer=None, num_tokens=n, grid=EVAL_GRID, dim=EVAL_DIM, dtype="float16", extras=extras)
    writer = CacheWriter(root, template, shard_size=8)
    for i in range(num_images):
        document = i % 2 == 1
        features = torch.randn(1, EVAL_DIM, generator=generator) + 0.2 * torch.randn(1, n, EVAL_DIM, generator=generator)
        text = torch.zeros(1, n)
        if document:
            text[0, 4:8] = 1.0  # second row of the grid is a line of text
            text[0, 8] = 0.2  # below the 0.25 coverage threshold: not a text patch
            features[0, 4:8] += 2.0 * torch.randn(4, EVAL_DIM, generator=generator)
        record = {"id": f"img{i:02d}", "image": f"img{i:02d}.png", "kind": "document" if document else "photo"}
        if splits:
            record["split"] = "test" if i % 3 == 0 else "train"
        values = {"text": text}
        if attention:
            values["attention"] = features.norm(dim=-1)
        writer.add(features, [record], values)
    writer.close()
    return root
