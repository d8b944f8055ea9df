"""Per-rank partial manifests and their merge into the cache's single ``manifest.json``.

During a run, rank ``r`` lists what it wrote in ``manifest.rank{r:03d}.json`` (its shards, its
skipped inputs); only global rank 0 ever writes ``manifest.json``: once before any rank starts
(folding in partials a killed run left behind) and once after every rank has finished (behind a
barrier). The merge is idempotent, keyed by shard file name, so a crash between writing
``manifest.json`` and deleting the partials never lists a shard twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Iterable, Sequence

from token_reduction.cache.manifest import MANIFEST_NAME, CacheError, Manifest
from token_reduction.extraction.storage import Store

PARTIAL_PATTERN = re.compile(r"^manifest\.rank(\d{3,})\.json$")
SHARD_PATTERN = re.compile(r"^shard-r(\d{3,})-(\d{5,})\.safetensors$")
TEMP_PATTERN = re.compile(r"^\.(shard-r\d{3,}-\d{5,}\.safetensors|manifest(\.rank\d{3,})?\.json|verified\.json)\..+\.tmp$")
"""Temp files of an atomic write that a kill interrupted (see ``atomic_write_bytes`` and ``Store.write_bytes``)."""


def partial_manifest_name(rank: int) -> str:
    """``manifest.rank003.json`` for rank 3."""
    return f"manifest.rank{rank:03d}.json"


def copy_manifest(manifest: Manifest, *, empty: bool = False) -> Manifest:
    """A deep copy (``empty``: without shards and skipped inputs, i.e. a template)."""
    data = json.loads(json.dumps(manifest.to_json()))
    if empty:
        data.update(shards=[], skipped=[], num_samples=0)
    return Manifest.from_json(data)


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(manifest.to_json(), indent=1).encode()


def read_manifest_at(store: Store, name: str = MANIFEST_NAME) -> Manifest:
    """Parse ``name`` in ``store``, with errors naming the file and the field."""
    source = f"{store.url.rstrip('/')}/{name}"
    try:
        data = json.loads(store.read_bytes(name))
    except FileNotFoundError as err:
        raise CacheError(f"{source} not found: not a feature cache (empty or not extracted yet)") from err
    except ValueError as err:
        raise CacheError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CacheError(f"{source}: expected a JSON object")
    return Manifest.from_json(data, source=source)


def partial_names(store: Store) -> list[str]:
    """Names of the per-rank partial manifests present, in rank order."""
    return sorted((n for n in store.names() if PARTIAL_PATTERN.match(n)), key=lambda n: int(PARTIAL_PATTERN.match(n)[1]))


def stored_images(manifest: Manifest) -> list[str]:
    """Source images with samples in the cache, in shard order, once each."""
    seen: dict[str, None] = {}
    for shard in manifest.shards:
        for sample in shard.samples:
            seen.setdefault(sample["image"], None)
    return list(seen)


def done_images(manifest: Manifest) -> set[str]:
    """Images stored or skipped: what a resumed run must not redo."""
    done = {sample["image"] for shard in manifest.shards for sample in shard.samples}
    done.update(entry["path"] for entry in manifest.skipped)
    return done


def merge_manifests(base: Manifest, partials: Iterable[Manifest], names: Sequence[str] | None = None) -> Manifest:
    """``base`` plus every partial's shards and skipped inputs (a new manifest; inputs are untouched).

    Shards are keyed by file name and skipped inputs by path, so merging the same partial twice
    changes nothing. Partials of other features, and an image stored by two different shards
    (two runs writing one cache at once), raise :class:`CacheError`: the cache is left as it was.
    """
    merged = copy_manifest(base)
    files = {shard.file for shard in merged.shards}
    skipped = {entry["path"] for entry in merged.skipped}
    owner = {sample["image"]: shard.file for shard in merged.shards for sample in shard.samples}
    for i, partial in enumerate(partials):
        label = names[i] if names else f"partial manifest {i}"
        mismatch = base.same_features_as(partial)
        if mismatch:
            raise CacheError(f"{label} lists features that differ from manifest.json ({', '.join(mismatch)}); remove it or choose another --out")
        for shard in partial.shards:
            if shard.file in files:
                continue
            for sample in shard.samples:
                other = owner.setdefault(sample["image"], shard.file)
                if other != shard.file:
                    raise CacheError(
                        f"{label}: image {sample['image']!r} is stored in both {other} and {shard.file}; "
                        "were two extractions writing this cache at once?"
                    )
            merged.shards.append(replace(shard, samples=[dict(sample) for sample in shard.samples]))
            files.add(shard.file)
        for entry in partial.skipped:
            if entry["path"] not in skipped and entry["path"] not in owner:
                merged.skipped.append(dict(entry))
                skipped.add(entry["path"])
    return merged


def read_progress(out: str, store: Store | None = None) -> Manifest:
    """The cache at ``out`` as it stands, in-flight per-rank partials included; writes nothing.

    ``manifest.json`` alone only changes at the start and end of a run; this is what a killed or
    running extraction has really stored (``complete`` is that of ``manifest.json``).
    """
    store = store or Store(out)
    base = read_manifest_at(store)
    names = partial_names(store)
    return merge_manifests(base, [read_manifest_at(store, n) for n in names], names)


def next_shard_index(manifest: Manifest, rank: int) -> int:
    """First shard index free for ``rank``: after every ``shard-r{rank}-*`` that ``manifest`` lists."""
    used = [int(m[2]) for s in manifest.shards if (m := SHARD_PATTERN.match(s.file)) and int(m[1]) == rank]
    return max(used, default=-1) + 1


def fold_partials(store: Store, expected: Iterable[str] | None = None) -> Manifest:
    """Merge every partial into ``manifest.json`` (written atomically), then delete the partials.

    Only for global rank 0 while no rank writes (before a run starts, or after all ranks finished).
    ``complete`` becomes true when ``expected`` is given and every one of its images is stored or
    skipped. Shard files that no manifest lists (a kill between a shard's write and its manifest's)
    and temp files of interrupted writes are deleted.
    """
    names = partial_names(store)
    merged = merge_manifests(read_manifest_at(store), [read_manifest_at(store, n) for n in names], names)
    merged.complete = expected is not None and not set(expected) - done_images(merged)
    store.write_bytes(MANIFEST_NAME, manifest_bytes(merged))
    for name in names:
        store.remove(name)
    listed = {shard.file for shard in merged.shards}
    for name in store.names():
        if (SHARD_PATTERN.match(name) and name not in listed) or TEMP_PATTERN.match(name):
            store.remove(name)
    return merged
