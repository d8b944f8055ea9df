"""Cache format: manifest validation, resumable writes, and every corruption named clearly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from synthetic import write_synthetic_cache
from token_reduction.cache.feature_cache import CacheWriter, FeatureCache
from token_reduction.cache.manifest import CacheError, Manifest, read_manifest


def edit_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_round_trip_reads_what_was_written(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=20, shard_size=8)
    cache = FeatureCache(root, verify="checksum")
    assert len(cache) == 20 and len(cache.manifest.shards) == 3
    assert cache.locate(17) == (2, 1)
    item = cache.read(17, ("features", "text"))
    assert item["features"].shape == (16, 16) and item["features"].dtype == torch.float16
    assert item["text"].shape == (16,)
    assert [s["id"] for s in cache.samples] == [f"img{i:03d}" for i in range(20)]


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="cache_dir: no such folder"):
        FeatureCache(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="manifest.json: manifest: not found"):
        FeatureCache(tmp_path / "empty")


def test_manifest_count_disagreeing_with_shards(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=8, shard_size=8)
    edit_manifest(root, num_samples=9)
    with pytest.raises(CacheError, match="'num_samples'"):
        FeatureCache(root)


@pytest.mark.parametrize(("field", "value", "message"), [("dim", 15, "dim"), ("dtype", "float32", "dtype"), ("grid", [2, 8], "shape")])
def test_manifest_fields_disagreeing_with_shard(tmp_path: Path, field: str, value, message: str) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=8, shard_size=8)
    changes = {field: value}
    if field == "grid":
        changes = {"grid": value, "num_tokens": 16}
        data = json.loads((root / "manifest.json").read_text())
        data["grid"], data["num_tokens"] = [2, 4], 8
        (root / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(CacheError, match="num_tokens"):
            FeatureCache(root)
        return
    edit_manifest(root, **changes)
    with pytest.raises(CacheError, match=message) as info:
        FeatureCache(root)
    assert "shard-" in str(info.value)


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=8, shard_size=8)
    shard = next(root.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match=f"{shard.name}.*truncated"):
        FeatureCache(root)


def test_corrupt_shard_fails_checksum(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=8, shard_size=8)
    shard = next(root.glob("shard-*.safetensors"))
    payload = bytearray(shard.read_bytes())
    payload[-10] ^= 0xFF
    shard.write_bytes(bytes(payload))
    FeatureCache(root, verify="size")  # same size: only the checksum can tell
    with pytest.raises(CacheError, match="sha256"):
        FeatureCache(root, verify="checksum")


def test_nan_features_are_named_on_read(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=4, shard_size=4, text=False)
    shard = next(root.glob("shard-*.safetensors"))
    features = torch.zeros(4, 16, 16, dtype=torch.float16)
    features[2, 3, 1] = float("nan")
    save_file({"features": features}, str(shard))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][0]["bytes"] = shard.stat().st_size
    manifest["shards"][0]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="img002.*NaN.*token-reduction extract"):
        FeatureCache(root)  # the checksum pass also reads every row: caught before training starts
    cache = FeatureCache(root, verify="size")
    cache.read(1)
    with pytest.raises(CacheError, match="img002.*NaN"):
        cache.read(2)


def test_writer_refuses_nan_and_wrong_shapes(tmp_path: Path) -> None:
    template = Manifest(encoder="x", layer=None, num_tokens=4, grid=(2, 2), dim=3, dtype="float16")
    writer = CacheWriter(tmp_path / "c", template)
    with pytest.raises(CacheError, match="shape"):
        writer.add(torch.zeros(1, 5, 3), [{"id": "a", "image": "a"}])
    with pytest.raises(CacheError, match="NaN"):
        writer.add(torch.full((1, 4, 3), float("inf")), [{"id": "a", "image": "a"}])


def test_incomplete_cache_is_refused_then_resumed(tmp_path: Path) -> None:
    template = Manifest(encoder="x", layer=None, num_tokens=4, grid=(2, 2), dim=3, dtype="float16")
    writer = CacheWriter(tmp_path / "c", template, shard_size=2)
    for name in "abc":
        writer.add(torch.ones(1, 4, 3), [{"id": name, "image": name}])
    # killed here: "c" is still buffered, "a" and "b" are in a shard
    with pytest.raises(CacheError, match="resume"):
        FeatureCache(tmp_path / "c")
    resumed = CacheWriter(tmp_path / "c", template, shard_size=2)
    assert resumed.done_images == {"a", "b"}
    resumed.add(torch.ones(1, 4, 3), [{"id": "c", "image": "c"}])
    resumed.skip("d.png", "not an image")
    resumed.close()
    cache = FeatureCache(tmp_path / "c")
    assert [s["id"] for s in cache.samples] == ["a", "b", "c"]
    assert read_manifest(tmp_path / "c").skipped == [{"path": "d.png", "reason": "not an image"}]


def test_writer_refuses_a_cache_of_other_features(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=4, shard_size=4)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    other = Manifest(encoder="other", layer=-2, num_tokens=16, grid=(4, 4), dim=16, dtype="float16", extras={"text": [16]})
    with pytest.raises(CacheError, match="encoder"):
        CacheWriter(root, other)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
