"""Shard verification before training: sha256 by default, each shard version hashed once, NaN caught up front."""

from __future__ import annotations

import json
import os
import struct
import time
import warnings
from pathlib import Path

import pytest

from synthetic import write_synthetic_cache
from token_reduction.cache import verify
from token_reduction.cache.datamodule import FeatureCacheDataModule
from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cache.manifest import CacheError, read_manifest
from token_reduction.cache.verify import RECORD_NAME, check_shards


def flip_feature_bytes(shard: Path, count: int = 32) -> None:
    """XOR the low (mantissa) byte of the first ``count`` fp16 features: same size, values stay finite."""
    payload = bytearray(shard.read_bytes())
    (header,) = struct.unpack("<Q", payload[:8])
    start = 8 + header + json.loads(payload[8 : 8 + header])["features"]["data_offsets"][0]
    for i in range(count):
        payload[start + 2 * i] ^= 0x01
    shard.write_bytes(bytes(payload))


def age(root: Path, seconds: float = 3600) -> None:
    """Date every shard ``seconds`` back, like a cache extracted earlier (recent files are never remembered)."""
    then = time.time_ns() - int(seconds * 1e9)
    for shard in root.glob("shard-*.safetensors"):
        os.utime(shard, ns=(then, then))


@pytest.fixture()
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files sha256 was computed for, in order."""
    calls: list[str] = []
    real = verify.sha256_of

    def counting(path: Path, *args, **kwargs) -> str:
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(verify, "sha256_of", counting)
    return calls


def test_flipped_bytes_are_caught_by_default(tmp_path: Path) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=8, shard_size=4)
    shard = sorted(root.glob("shard-*.safetensors"))[1]
    flip_feature_bytes(shard)
    FeatureCache(root, verify="size")  # same size, finite values: only the checksum can tell
    for make in (lambda: FeatureCache(root), lambda: FeatureCacheDataModule(str(root))):
        with pytest.raises(CacheError, match=rf"{shard.name}: sha256: .*re-run `token-reduction extract` with the same --images and --out"):
            make()


def test_each_shard_version_is_hashed_once(tmp_path: Path, hashed: list[str]) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=12, shard_size=4)
    shards = sorted(p.name for p in root.glob("shard-*.safetensors"))
    age(root)
    FeatureCache(root)
    assert sorted(hashed) == shards and set(json.loads((root / RECORD_NAME).read_text())["shards"]) == set(shards)
    FeatureCache(root)
    FeatureCacheDataModule(str(root))
    assert len(hashed) == 3  # remembered: the second and third opening hash nothing
    original = (root / shards[1]).read_bytes()
    flip_feature_bytes(root / shards[1])  # changed after verification: new mtime, hashed again
    with pytest.raises(CacheError, match="sha256"):
        FeatureCache(root)
    assert hashed[3:] == [shards[1]]
    (root / shards[1]).write_bytes(original)
    FeatureCache(root)
    assert hashed[4:] == [shards[1]]


def test_just_written_shards_are_not_remembered(tmp_path: Path) -> None:
    """Timestamps are coarse: a change right after hashing could keep the mtime, so such shards are hashed next time too."""
    root = write_synthetic_cache(tmp_path / "c", num_images=4, shard_size=4)
    soon = time.time_ns() + 10 * 10**9
    for shard in root.glob("shard-*.safetensors"):
        os.utime(shard, ns=(soon, soon))
    FeatureCache(root)
    assert not (root / RECORD_NAME).exists()


def test_a_read_only_cache_is_verified_without_a_record(tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=8, shard_size=4)
    age(root)

    def read_only(path: Path, payload: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(verify, "atomic_write_bytes", read_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FeatureCache(root)
        FeatureCache(root)
    assert len(hashed) == 4 and not (root / RECORD_NAME).exists()  # nothing remembered, so hashed each time
    assert capsys.readouterr() == ("", "")


def test_all_problems_are_listed_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_synthetic_cache(tmp_path / "c", num_images=16, shard_size=4)
    shards = sorted(root.glob("shard-*.safetensors"))
    shards[0].unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:-50])
    flip_feature_bytes(shards[2])
    problems = check_shards(root, read_manifest(root), stop_at_first=False, progress=True)
    assert {name: err.reason for name, err in problems.items()} == {
        shards[0].name: "missing", shards[1].name: "truncated", shards[2].name: "sha256 mismatch"}
    assert "verify cache" in capsys.readouterr().err  # the progress bar, when asked for
    assert check_shards(root, read_manifest(root), "none") == {}
    with pytest.raises(ValueError, match="none|size|checksum"):
        check_shards(root, read_manifest(root), "sha1")
