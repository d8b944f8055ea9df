"""The frozen encoder as a LightningModule: ``predict_step`` turns prepared images into cache rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor

from token_reduction.encoders import Encoder
from token_reduction.extraction.inputs import PreparedImage


@dataclass
class EncodedImage:
    """All crops of one image, encoded (or the reason it was skipped): one ``CacheWriter.add`` call."""

    rel: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    features: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    error: str | None = None


class EncoderModule(L.LightningModule):
    """Wraps an :class:`Encoder` for ``Trainer.predict``.

    Each batch is a list of :class:`PreparedImage` (ragged: AnyRes images have different numbers of
    crops); their crops are concatenated and encoded ``batch_size`` at a time, then split back per
    image, so the crops of an image always stay together. Outputs come back on the CPU in float32;
    the writer rounds them to the cache's storage dtype.

    ``compute_dtype``: cast the encoder to it when the run's device is a GPU (the VLMs run their
    towers in half precision); on the CPU the encoder computes in what it was loaded in.
    """

    def __init__(self, encoder: Encoder, batch_size: int = 32, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.batch_size = batch_size
        self.compute_dtype = compute_dtype

    def setup(self, stage: str) -> None:
        if self.compute_dtype is not None and self.trainer.strategy.root_device.type == "cuda":
            self.encoder.to(dtype=self.compute_dtype)

    def encode_crops(self, pixels: Tensor) -> dict[str, Tensor]:
        """Encode ``(n, 3, H, W)`` crops ``batch_size`` at a time; float32 CPU outputs."""
        outputs: dict[str, list[Tensor]] = {}
        for start in range(0, len(pixels), self.batch_size):
            for name, value in self.encoder.encode(pixels[start : start + self.batch_size]).items():  # it moves them to its device
                outputs.setdefault(name, []).append(value.float().cpu())
        return {name: torch.cat(parts) for name, parts in outputs.items()}

    def predict_step(self, batch: list[PreparedImage], batch_idx: int = 0) -> list[EncodedImage]:
        ready = [item for item in batch if item.error is None]
        if not ready:
            merged: dict[str, Tensor] = {}
        elif hasattr(self.encoder, "encode_inputs"):  # per-image processor outputs (VLM checkpoints): the encoder batches them
            merged = self.encoder.encode_inputs([item.pixels for item in ready], [len(item.samples) for item in ready], self.batch_size)
        else:
            merged = self.encode_crops(torch.cat([item.pixels for item in ready]))
        results, offset = [], 0
        for item in batch:
            if item.error is not None:
                results.append(EncodedImage(item.rel, error=item.error))
                continue
            n = len(item.samples)
            extras = {name: value[offset : offset + n] for name, value in merged.items() if name != "features"}
            if item.text is not None:
                extras["text"] = item.text
            results.append(EncodedImage(item.rel, item.samples, merged["features"][offset : offset + n], extras))
            offset += n
        return results
