"""Tiny synthetic feature caches written with the real CacheWriter (importable by any test)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from token_reduction.cache.feature_cache import CacheWriter
from token_reduction.cache.manifest import Manifest


def write_synthetic_cache(
    root: Path,
    num_images: int = 48,
    grid: tuple[int, int] = (4, 4),
    dim: int = 16,
    shard_size: int = 16,
    seed: int = 0,
    text: bool = True,
    splits: bool = False,
    encoder: str = "synthetic",
) -> Path:
    """Smooth 'background' tokens plus a few high-energy 'detail' tokens per image.

    Detail tokens are unpredictable from their neighbours, so a selector that learns anything
    should keep them; the ``text`` extra marks them like text boxes would.
    """
    generator = torch.Generator().manual_seed(seed)
    num_tokens = grid[0] * grid[1]
    template = Manifest(
        encoder=encoder, layer=None, num_tokens=num_tokens, grid=grid, dim=dim, dtype="float16",
        extras={"text": [num_tokens]} if text else {},
    )
    writer = CacheWriter(root, template, shard_size=shard_size)
    base = torch.randn(1, dim, generator=generator)
    for i in range(num_images):
        features = base + 0.1 * torch.randn(1, num_tokens, dim, generator=generator)
        detail = torch.rand(num_tokens, generator=generator) < 0.25
        features[0, detail] += 2.0 * torch.randn(int(detail.sum()), dim, generator=generator)
        record = {"id": f"img{i:03d}", "image": f"img{i:03d}.png", "kind": "document" if i % 2 else "photo"}
        if splits:
            record["split"] = "test" if i % 6 == 0 else ("val" if i % 6 == 1 else "train")
        extras = {"text": detail.float()[None]} if text else None
        writer.add(features, [record], extras)
    writer.close()
    return root



class IndexRecorder(L.Callback):
    """Records the sample indices each rank trained on into ``<out>/rank<r>-epoch<e>.txt``.

    Lives in an importable module (not a test file) so spawned DDP workers can unpickle it.
    """

    def __init__(self, out: str) -> None:
        self.out, self.seen = Path(out), []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, batch_idx: int) -> None:
        self.seen.extend(int(i) for i in batch["index"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        name = f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.txt"
        (self.out / name).write_text("\n".join(map(str, self.seen)))
        self.seen = []
