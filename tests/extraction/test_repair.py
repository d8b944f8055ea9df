"""Rerunning ``extract``: it repairs damaged shards, and refuses a different images folder for the same cache."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cache.manifest import CacheError
from token_reduction.extraction.run import extract

ENCODER = "pixels:8@32"
OPTIONS = dict(batch_size=2, shard_size=2, dtype="fp32", progress=False)


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` random 32x32 PNGs, sorted relative names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return [f"img{i:02d}.png" for i in range(count)]


def rows(root: Path) -> dict[str, torch.Tensor]:
    cache = FeatureCache(root, verify="checksum")
    found = {sample["id"]: cache.read(i)["features"].clone() for i, sample in enumerate(cache.samples)}  # not a view of the file
    assert len(found) == len(cache), "a sample id is stored twice"
    return found


def flip_bytes(shard: Path, count: int = 32) -> None:
    """XOR the lowest byte of ``count`` fp32 features: same size, still finite."""
    payload = bytearray(shard.read_bytes())
    (header,) = struct.unpack("<Q", payload[:8])
    start = 8 + header + json.loads(payload[8 : 8 + header])["features"]["data_offsets"][0]
    for i in range(count):
        payload[start + 4 * i] ^= 0x01
    shard.write_bytes(bytes(payload))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir()}


def test_rerun_repairs_missing_truncated_and_corrupt_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = write_images(tmp_path / "images", 8)
    cache = tmp_path / "cache"
    extract(ENCODER, tmp_path / "images", cache, **OPTIONS)
    clean = rows(cache)
    shards = sorted(cache.glob("shard-*.safetensors"))
    assert len(shards) == 4
    intact = shards[3].read_bytes()
    shards[0].unlink()
    shards[1].write_bytes(shards[1].read_bytes()[:-100])
    flip_bytes(shards[2])
    with pytest.raises(CacheError, match=r"re-run `token-reduction extract` with the same --images and --out to repair it"):
        FeatureCache(cache)  # what fit says
    capsys.readouterr()

    repaired = extract(ENCODER, tmp_path / "images", cache, **OPTIONS)
    notes = [line for line in capsys.readouterr().err.splitlines() if "repairing" in line]
    assert len(notes) == 1 and "dropped 3 damaged shard(s)" in notes[0] and "re-encoding their 6 image(s)" in notes[0]
    for name, reason in ((shards[0].name, "missing"), (shards[1].name, "truncated"), (shards[2].name, "sha256 mismatch")):
        assert f"{name} ({reason})" in notes[0]
    assert repaired.complete and repaired.num_samples == 8
    assert shards[3].read_bytes() == intact  # the sound shard was kept, not redone
    ours = rows(cache)  # verify="checksum" passes
    assert sorted(ours) == names
    for name in names:
        torch.testing.assert_close(ours[name], clean[name], rtol=0, atol=0)  # the pixels encoder is deterministic

    again = extract(ENCODER, tmp_path / "images", cache, **OPTIONS)
    assert again.to_json() == repaired.to_json() and "repairing" not in capsys.readouterr().err


def test_another_images_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_images(tmp_path / "first", 3)
    write_images(tmp_path / "second", 3, seed=1)  # same relative names, other pixels
    cache = tmp_path / "cache"
    extract(ENCODER, tmp_path / "first", cache, **OPTIONS)
    before = snapshot(cache)
    with pytest.raises(CacheError) as info:
        extract(ENCODER, tmp_path / "second", cache, **OPTIONS)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{cache}/manifest.json: images_root: ")
    assert f"original --images {(tmp_path / 'first').resolve()}" in message and "another --out" in message
    assert snapshot(cache) == before  # nothing was changed


@pytest.mark.parametrize("spelling", ["first", "first/", "./first/../first", "ABSOLUTE/", "file://ABSOLUTE"])
def test_the_same_folder_spelled_another_way_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str) -> None:
    names = write_images(tmp_path / "first", 3)
    cache = tmp_path / "cache"
    extract(ENCODER, tmp_path / "first", cache, max_images=1, **OPTIONS)
    monkeypatch.chdir(tmp_path)
    resumed = extract(ENCODER, spelling.replace("ABSOLUTE", str(tmp_path / "first")), cache, **OPTIONS)
    assert resumed.complete and sorted(rows(cache)) == names
