"""Re-running ``extract`` repairs a damaged cache: shards that fail verification are dropped and redone.

Why: a shard deleted, truncated or corrupted after extraction makes every ``fit`` fail, and the
cure is exactly what a resumed run already does for images not yet stored. So before a run the
listed shards are checked; damaged ones leave the manifest (with them their images leave the
"done" set) and the run re-encodes those images like any other.

Local caches get the full ``checksum`` check of :mod:`token_reduction.cache.verify` (each shard
version hashed once, remembered in ``verified.json``). On fsspec URLs only presence and size are
checked: hashing there would download the whole cache on every run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from token_reduction.cache.manifest import Manifest
from token_reduction.cache.verify import check_shards
from token_reduction.extraction.storage import Store


def damaged_shards(store: Store, manifest: Manifest) -> dict[str, str]:
    """Listed shards that fail verification, by file name, with a few words on why."""
    if store.local:
        problems = check_shards(Path(store.path), manifest, "checksum", stop_at_first=False)
        return {name: err.reason for name, err in problems.items()}
    damaged = {}
    for shard in manifest.shards:
        size = store.size(shard.file)
        if size is None:
            damaged[shard.file] = "missing"
        elif size != shard.bytes:
            damaged[shard.file] = "truncated" if size < shard.bytes else "wrong size"
    return damaged


def without_shards(manifest: Manifest, files: set[str]) -> Manifest:
    """``manifest`` minus the shards in ``files`` (not complete: their images are to be redone)."""
    return replace(manifest, shards=[shard for shard in manifest.shards if shard.file not in files], complete=False)


def repair_note(url: str, manifest: Manifest, damaged: dict[str, str]) -> str:
    """One line for the log: which shards were dropped, why, and how many images are redone."""
    images = {sample["image"] for shard in manifest.shards if shard.file in damaged for sample in shard.samples}
    listed = ", ".join(f"{name} ({reason})" for name, reason in sorted(damaged.items()))
    return f"{url}: repairing the cache: dropped {len(damaged)} damaged shard(s): {listed}; re-encoding their {len(images)} image(s)"
