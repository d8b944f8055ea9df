"""Checking a cache's shards against its manifest, hashing each shard version once.

Why: a few flipped bytes keep a shard's size and its values finite, so only a checksum tells, and a
cache of many GB should not be hashed again at every ``fit``. Each shard's sha256 is checked once and
remembered in ``verified.json`` beside the manifest, keyed by shard file name with the size and
mtime the shard had; a shard changed since (other size or mtime) is hashed again. Right after
hashing, the same shard (now in the page cache) is checked for NaN/inf features, so a bad row stops
a run before training instead of mid-epoch. A read-only cache is still verified, just not remembered.

Levels: ``none`` (trust the manifest), ``size`` (files present, sizes and safetensors headers match)
and ``checksum`` (``size`` plus sha256 and finite features; the default).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from safetensors import safe_open
from tqdm.auto import tqdm

from token_reduction.cache.manifest import MANIFEST_NAME, CacheError, Manifest, ShardInfo, atomic_write_bytes

VERIFY_LEVELS = ("none", "size", "checksum")
RECORD_NAME = "verified.json"
SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
ITEM_BYTES = {"F16": 2, "BF16": 2, "F32": 4}
REPAIR = "re-run `token-reduction extract` with the same --images and --out to repair it"
RACY_NS = 2_000_000_000
"""A shard modified less than this before it was hashed is not remembered: file timestamps are
coarse (up to 2 s), so a later change could keep the same mtime (git's "racy clean" problem)."""
PROGRESS_MIN_BYTES = 256 << 20
"""Below this much to hash the progress bar stays hidden (it would only flash)."""
CHUNK = 1 << 20
ROWS_BYTES = 64 << 20


class ShardError(CacheError):
    """One shard fails verification; ``reason`` is a few words for a summary line."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def sha256_of(path: Path, chunk: int = CHUNK, bar: Any = None) -> str:
    """Streamed sha256 of a file (``bar``: a tqdm bar advanced by the bytes read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    return digest.hexdigest()


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, or a :class:`CacheError` naming the file."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > os.path.getsize(path) - 8:
                raise ValueError("header longer than the file")
            return json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as err:
        raise ShardError(f"{path}: header: not a readable safetensors shard ({err}); {REPAIR}", "unreadable") from err


def check_layout(root: Path, manifest: Manifest, shard: ShardInfo) -> os.stat_result:
    """The ``size`` level for one shard: present, as many bytes as listed, tensors as the manifest says."""
    path = root / shard.file
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ShardError(f"{path}: file: missing, though {MANIFEST_NAME} lists it; {REPAIR}", "missing") from None
    if stat.st_size != shard.bytes:
        raise ShardError(
            f"{path}: bytes: the file has {stat.st_size} bytes but {MANIFEST_NAME} says {shard.bytes} (truncated or replaced); {REPAIR}",
            "truncated" if stat.st_size < shard.bytes else "wrong size",
        )
    header = read_safetensors_header(path)
    features = header.get("features")
    if not isinstance(features, dict):
        raise ShardError(f"{path}: features: no 'features' tensor; {REPAIR}", "no features")
    expected = [shard.num_samples, manifest.num_tokens, manifest.dim]
    if features.get("shape") != expected:
        fields = ("num_samples", "num_tokens", "dim")
        bad = [f"{f} ({got} vs manifest {want})" for f, got, want in zip(fields, features.get("shape") or [], expected) if got != want]
        raise ShardError(f"{path}: features: shape {features.get('shape')} disagrees with {MANIFEST_NAME}: {', '.join(bad) or 'rank'}", "wrong shape")
    if features.get("dtype") != SAFETENSORS_DTYPES[manifest.dtype]:
        raise ShardError(f"{path}: features: dtype {features.get('dtype')} disagrees with {MANIFEST_NAME} field 'dtype' ({manifest.dtype})", "wrong dtype")
    for name, shape in manifest.extras.items():
        if not isinstance(header.get(name), dict) or header[name].get("shape") != [shard.num_samples, *shape]:
            raise ShardError(f"{path}: {name}: extra tensor missing or of the wrong shape ({MANIFEST_NAME} field 'extras')", "wrong extras")
    return stat


def check_contents(root: Path, shard: ShardInfo, bar: Any = None) -> None:
    """The ``checksum`` level for one shard: sha256 as listed, then every feature finite."""
    path = root / shard.file
    try:
        digest = sha256_of(path, bar=bar)
    except OSError as err:
        raise ShardError(f"{path}: file: unreadable ({err}); {REPAIR}", "unreadable") from err
    if digest != shard.sha256:
        raise ShardError(f"{path}: sha256: differs from {MANIFEST_NAME} (the shard is corrupt); {REPAIR}", "sha256 mismatch")
    row = first_non_finite_row(path)
    if row is not None:
        sample = shard.samples[row].get("id", row) if row < len(shard.samples) else row
        raise ShardError(f"{path}: features: sample {sample!r} (row {row}) has NaN/inf features; {REPAIR}", "NaN/inf features")


def first_non_finite_row(path: Path) -> int | None:
    """Index of the first sample whose features hold NaN or inf (``None`` when all are finite).

    Reads memory-mapped blocks of rows (~64 MiB each), so a shard never has to fit in RAM.
    """
    with safe_open(str(path), framework="pt") as handle:
        features = handle.get_slice("features")
        rows, *rest = features.get_shape()
        row_bytes = ITEM_BYTES.get(features.get_dtype(), 4) * math.prod(rest)
        step = max(1, ROWS_BYTES // max(1, row_bytes))
        for start in range(0, rows, step):
            finite = torch.isfinite(features[start : start + step]).flatten(1).all(1)
            if not finite.all():
                return start + int((~finite).nonzero()[0])
    return None


class VerifiedRecord:
    """``verified.json``: shard name -> ``{bytes, mtime_ns, sha256}`` of a version that passed ``checksum``."""

    def __init__(self, root: Path) -> None:
        self.path = root / RECORD_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and isinstance(data.get("shards"), dict):
                self.entries = {k: v for k, v in data["shards"].items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass  # none yet, or unreadable: verify everything again

    def holds(self, shard: ShardInfo, stat: os.stat_result) -> bool:
        """True when this very shard version (same size, mtime and listed sha256) was verified."""
        entry = self.entries.get(shard.file)
        return entry == {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard.sha256}

    def remember(self, shard: ShardInfo, stat: os.stat_result, started_ns: int) -> None:
        if stat.st_mtime_ns < started_ns - RACY_NS:
            self.entries[shard.file] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard.sha256}
            self.changed = True

    def save(self, listed: Iterable[str]) -> None:
        """Write (atomically) when something changed; entries of shards no longer listed are dropped."""
        keep = set(listed)
        stale = set(self.entries) - keep
        if not (self.changed or stale):
            return
        shards = {name: entry for name, entry in sorted(self.entries.items()) if name in keep}
        try:
            atomic_write_bytes(self.path, json.dumps({"format": 1, "shards": shards}, indent=1).encode())
        except OSError:
            pass  # a read-only cache: verified all the same, only not remembered


def check_shards(
    root: str | os.PathLike, manifest: Manifest, level: str = "checksum", *, progress: bool | None = None, stop_at_first: bool = True
) -> dict[str, ShardError]:
    """Shards failing verification at ``level``, by file name (empty when every shard passes).

    ``progress``: a tqdm bar over the bytes to hash; ``None`` shows it on rank 0 of a terminal when
    there are at least :data:`PROGRESS_MIN_BYTES` to hash.
    """
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {'|'.join(VERIFY_LEVELS)}, got {level!r}")
    root = Path(root)
    problems: dict[str, ShardError] = {}
    if level == "none":
        return problems
    record = VerifiedRecord(root) if level == "checksum" else None
    todo: list[tuple[ShardInfo, os.stat_result]] = []
    for shard in manifest.shards:
        try:
            stat = check_layout(root, manifest, shard)
        except ShardError as err:
            problems[shard.file] = err
            if stop_at_first:
                return problems
            continue
        if record is not None and not record.holds(shard, stat):
            todo.append((shard, stat))
    if record is None or not todo:
        return problems
    total = sum(stat.st_size for _, stat in todo)
    if progress is None:
        progress = total >= PROGRESS_MIN_BYTES and rank_zero_only.rank == 0 and sys.stderr.isatty()
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify cache", disable=not progress, dynamic_ncols=True) as bar:
        for shard, stat in todo:
            started = time.time_ns()
            try:
                check_contents(root, shard, bar)
            except ShardError as err:
                problems[shard.file] = err
                if stop_at_first:
                    break
                continue
            record.remember(shard, stat, started)
    record.save(shard.file for shard in manifest.shards)
    return problems


def verify_shards(root: str | os.PathLike, manifest: Manifest, level: str = "checksum", *, progress: bool | None = None) -> None:
    """Raise the first shard's :class:`ShardError` (its message says how to repair the cache)."""
    problems = check_shards(root, manifest, level, progress=progress)
    if problems:
        raise next(iter(problems.values()))
