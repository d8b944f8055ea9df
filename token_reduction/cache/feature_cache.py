"""Feature cache on disk: fp16 safetensors shards plus ``manifest.json``.

Why safetensors: a well-kept format with a tiny header, zero-copy memory-mapped reads of single
rows (so a DataLoader streams a cache far larger than RAM), and no code execution on load.
Writers are atomic and resumable: a shard is written to a temp file and renamed, then the manifest
is rewritten the same way, so a killed run leaves a valid (incomplete) cache to continue from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save

from token_reduction.cache.manifest import (
    CacheError,
    Manifest,
    ShardInfo,
    atomic_write_bytes,
    read_manifest,
    write_manifest,
)
from token_reduction.cache.verify import REPAIR, verify_shards

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CacheWriter:
    """Appends samples to a cache, one atomic shard at a time; reopening an existing cache resumes it.

    Samples are added per source image (all crops of one image together), so "this image is done"
    is exact at shard granularity and a resumed run never writes an image twice.
    """

    def __init__(self, root: str | os.PathLike, template: Manifest, shard_size: int = 256, rank: int = 0) -> None:
        self.root = Path(root)
        self.shard_size = shard_size
        self.rank = rank
        self._clear_buffers(template)
        if (self.root / "manifest.json").exists():
            existing = read_manifest(self.root)
            mismatch = existing.same_features_as(template)
            if mismatch:
                details = ", ".join(f"{k}: {getattr(existing, k)!r} vs {getattr(template, k)!r}" for k in mismatch)
                raise CacheError(
                    f"{self.root} already holds a cache of different features ({details}); "
                    "choose another --out folder (nothing was changed)"
                )
            self.manifest = existing
            self.manifest.complete = False
        else:
            if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
                raise CacheError(f"{self.root} exists and is not a feature cache; choose an empty or new --out folder")
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = template
            write_manifest(self.root, self.manifest)

    @property
    def done_images(self) -> set[str]:
        """Images already stored or skipped, which a resumed run must not redo."""
        done = {sample["image"] for shard in self.manifest.shards for sample in shard.samples}
        done.update(entry["path"] for entry in self.manifest.skipped)
        return done

    def add(self, features: torch.Tensor, samples: Sequence[dict[str, Any]], extras: dict[str, torch.Tensor] | None = None) -> None:
        """Buffer the samples (crops) of one image: ``features`` ``(n, num_tokens, dim)``."""
        m = self.manifest
        expected = (len(samples), m.num_tokens, m.dim)
        if tuple(features.shape) != expected:
            raise CacheError(f"features of {samples[0].get('image')} have shape {tuple(features.shape)}, expected {expected}")
        if not torch.isfinite(features).all():
            raise CacheError(f"features of {samples[0].get('image')} contain NaN or inf")
        self._features.append(features.detach().to("cpu", TORCH_DTYPES[m.dtype]))
        for name, shape in m.extras.items():
            if extras is None or name not in extras:
                raise CacheError(f"extra '{name}' missing for {samples[0].get('image')}")
            value = extras[name].detach().cpu()
            if tuple(value.shape) != (len(samples), *shape):
                raise CacheError(f"extra '{name}' of {samples[0].get('image')} has shape {tuple(value.shape)}")
            self._extras[name].append(value.float().to(TORCH_DTYPES[m.dtype]))
        self._samples.extend(dict(s) for s in samples)
        if len(self._samples) >= self.shard_size:
            self.flush()

    def skip(self, path: str, reason: str) -> None:
        """Record an input that could not be used; it is listed, never fatal."""
        self.manifest.skipped.append({"path": path, "reason": reason})

    def flush(self) -> None:
        """Write buffered samples as one shard, then the manifest (both atomically)."""
        if not self._samples:
            self._write_manifest()
            return
        tensors = {"features": torch.cat(self._features).contiguous()}
        tensors.update({name: torch.cat(parts).contiguous() for name, parts in self._extras.items()})
        name = self._shard_name()
        payload = save(tensors, metadata={"format": "pt"})
        self._write_shard(name, payload)
        self.manifest.shards.append(
            ShardInfo(
                file=name,
                num_samples=len(self._samples),
                bytes=len(payload),
                sha256=hashlib.sha256(payload).hexdigest(),
                samples=self._samples,
                rank=self.rank,
            )
        )
        self._write_manifest()
        self._clear_buffers(self.manifest)

    def close(self, complete: bool = True) -> Manifest:
        self.flush()
        self.manifest.complete = complete
        self._write_manifest()
        return self.manifest

    # Storage hooks: a subclass may keep the same buffering and validation but write elsewhere
    # (per-rank partial manifests, fsspec URLs; see token_reduction.extraction.writer).

    def _clear_buffers(self, template: Manifest) -> None:
        self._features: list[torch.Tensor] = []
        self._extras: dict[str, list[torch.Tensor]] = {name: [] for name in template.extras}
        self._samples: list[dict[str, Any]] = []

    def _shard_name(self) -> str:
        """File name of the next shard: ``shard-r{rank:03d}-{index:05d}.safetensors``."""
        return shard_file_name(self.rank, len(self.manifest.shards))

    def _write_shard(self, name: str, payload: bytes) -> None:
        atomic_write_bytes(self.root / name, payload)

    def _write_manifest(self) -> None:
        write_manifest(self.root, self.manifest)


def shard_file_name(rank: int, index: int) -> str:
    """The name of shard ``index`` written by ``rank`` (unique per writer, so ranks never collide)."""
    return f"shard-r{rank:03d}-{index:05d}.safetensors"


class FeatureCache:
    """Read-only view of a cache: validated manifest, memory-mapped row access.

    Open shard handles are per process (they are dropped when pickled), so a cache can be handed
    to DataLoader workers and DDP ranks.
    """

    def __init__(
        self, root: str | os.PathLike, verify: str = "checksum", require_complete: bool = True, progress: bool | None = None
    ) -> None:
        """``verify``: ``none``, ``size`` or ``checksum`` (sha256 and finite features, each shard version
        hashed once; see :mod:`token_reduction.cache.verify`); ``progress`` shows a bar while hashing."""
        if verify not in ("none", "size", "checksum"):
            raise ValueError(f"verify must be none|size|checksum, got {verify!r}")
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        m = self.manifest
        if require_complete and not m.complete:
            raise CacheError(
                f"{self.root / 'manifest.json'}: field 'complete' is false: extraction did not finish; "
                "run the same `token-reduction extract` command again to resume it"
            )
        if not m.shards:
            raise CacheError(f"{self.root / 'manifest.json'}: field 'shards' is empty: the cache holds no samples")
        verify_shards(self.root, m, verify, progress=progress)
        self._offsets = [0]
        for shard in m.shards:
            self._offsets.append(self._offsets[-1] + shard.num_samples)
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def samples(self) -> list[dict[str, Any]]:
        """Sample records in global index order."""
        return [sample for shard in self.manifest.shards for sample in shard.samples]

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, row)`` of global sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for a cache of {len(self)}")
        lo, hi = 0, len(self.manifest.shards)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._offsets[mid] <= index:
                lo = mid
            else:
                hi = mid
        return lo, index - self._offsets[lo]

    def shard_of(self, index: int) -> int:
        return self.locate(index)[0]

    def _handle(self, shard: int) -> Any:
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / self.manifest.shards[shard].file), framework="pt")
        return self._handles[shard]

    def read(self, index: int, names: Iterable[str] = ("features",)) -> dict[str, torch.Tensor]:
        """Tensors of one sample (memory-mapped slice, no whole-shard load); checks features are finite."""
        shard, row = self.locate(index)
        handle = self._handle(shard)
        out = {name: handle.get_slice(name)[row : row + 1][0] for name in names}
        features = out.get("features")
        if features is not None and not torch.isfinite(features).all():
            sample = self.manifest.shards[shard].samples[row].get("id", row)
            raise CacheError(f"{self.root / self.manifest.shards[shard].file}: sample {sample!r} (row {row}) has NaN/inf features; {REPAIR}")
        return out

    def read_many(self, indices: Sequence[int], names: Iterable[str] = ("features",)) -> dict[str, torch.Tensor]:
        """Stack several samples (each a memory-mapped row read)."""
        names = tuple(names)
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for index in indices:
            for name, value in self.read(index, names).items():
                parts[name].append(value)
        return {name: torch.stack(values) for name, values in parts.items()}
