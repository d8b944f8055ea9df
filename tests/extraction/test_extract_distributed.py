"""Extraction on Lightning's machinery: 2 CPU processes (gloo) equal 1, resume after a kill, fsspec URLs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.images.default_set import build_default_set
from token_reduction.cache.manifest import CacheError, Manifest, ShardInfo, read_manifest
from token_reduction.cli.extract import extract_main
from token_reduction.extraction.run import extract
from token_reduction.extraction.inputs import find_images
from token_reduction.extraction import (
    Store,
    block_bounds,
    merge_manifests,
    partial_manifest_name,
    read_progress,
)
from token_reduction.extraction.datamodule import RankBlockSampler

ENCODER = "pixels:16@64"
OPTIONS = dict(batch_size=2, shard_size=2, progress=False)
TWO_CPU_PROCESSES = dict(accelerator="cpu", devices=2, strategy="ddp_spawn")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 images (photos and text pages with box sidecars, so the ``text`` extra is stored too)."""
    return build_default_set(tmp_path_factory.mktemp("set") / "images", num_images=12, size=64, seed=0, progress=False)


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images extracted by one process."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    extract(ENCODER, images, out, **OPTIONS)
    return out


def rows_by_id(cache: FeatureCache) -> dict[str, dict[str, torch.Tensor]]:
    """Every sample's tensors keyed by id; fails when an id is stored twice."""
    rows: dict[str, dict[str, torch.Tensor]] = {}
    for index, sample in enumerate(cache.samples):
        assert sample["id"] not in rows, f"{sample['id']} stored twice"
        rows[sample["id"]] = cache.read(index, ("features", *cache.manifest.extras))
    return rows


def assert_same_cache(ours: Path, theirs: Path) -> None:
    a, b = rows_by_id(FeatureCache(ours, verify="checksum")), rows_by_id(FeatureCache(theirs, verify="checksum"))
    assert sorted(a) == sorted(b)
    for sid in a:
        for name, value in a[sid].items():
            torch.testing.assert_close(value.float(), b[sid][name].float(), rtol=1e-3, atol=1e-3)  # fp16 storage


def leftovers(root: Path) -> list[str]:
    """Per-rank manifests and temp files that a finished run must not leave behind."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith((".", "manifest.rank")))


@pytest.mark.parametrize("total", [0, 1, 5, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_blocks_are_disjoint_complete_and_unpadded(total: int, world: int) -> None:
    blocks = [list(RankBlockSampler(total, world, rank)) for rank in range(world)]
    assert sum(blocks, []) == list(range(total))  # in order, each index once, nothing repeated
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1 and sizes == [len(RankBlockSampler(total, world, r)) for r in range(world)]
    assert block_bounds(total, world, world - 1)[1] == total


def _manifest(*shards: ShardInfo, skipped: list | None = None) -> Manifest:
    return Manifest(encoder="e", layer=None, num_tokens=4, grid=(2, 2), dim=3, dtype="float16", shards=list(shards), skipped=skipped or [])


def _shard(file: str, rank: int, *images: str) -> ShardInfo:
    return ShardInfo(file, len(images), 1, "x", [{"id": i, "image": i} for i in images], rank)


def test_merge_is_idempotent_and_refuses_an_image_stored_twice() -> None:
    base = _manifest(_shard("shard-r000-00000.safetensors", 0, "a", "b"))
    rank1 = _manifest(_shard("shard-r001-00000.safetensors", 1, "c"), skipped=[{"path": "bad.png", "reason": "x"}])
    merged = merge_manifests(base, [rank1, rank1])
    assert [(s.file, s.rank) for s in merged.shards] == [("shard-r000-00000.safetensors", 0), ("shard-r001-00000.safetensors", 1)]
    assert merged.skipped == [{"path": "bad.png", "reason": "x"}] and len(base.shards) == 1  # inputs untouched
    assert merge_manifests(merged, [rank1]).num_samples == 3  # folding a partial in again changes nothing
    clash = _manifest(_shard("shard-r002-00000.safetensors", 2, "b"))
    with pytest.raises(CacheError, match=r"'b' is stored in both shard-r000-00000.safetensors and shard-r002"):
        merge_manifests(base, [clash], ["manifest.rank002.json"])
    other = _manifest()
    other.dim = 5
    with pytest.raises(CacheError, match="differ from manifest.json"):
        merge_manifests(base, [other])
    assert partial_manifest_name(3) == "manifest.rank003.json"


def test_two_processes_store_the_same_samples_as_one(images: Path, tmp_path: Path) -> None:
    """AnyRes, so each image has several crops: they must stay together, in one shard of one rank."""
    one = extract(ENCODER, images, tmp_path / "one", anyres=True, **OPTIONS)
    manifest = extract(ENCODER, images, tmp_path / "two", anyres=True, **OPTIONS, **TWO_CPU_PROCESSES)
    assert manifest.complete and manifest.num_samples == one.num_samples > 12 and manifest.extras == {"text": [16]}
    assert {shard.rank for shard in manifest.shards} == {0, 1}  # who wrote which shard
    assert all(shard.file.startswith(f"shard-r{shard.rank:03d}-") for shard in manifest.shards)
    shard_of_image: dict[str, set[str]] = {}
    for shard in manifest.shards:
        for sample in shard.samples:
            shard_of_image.setdefault(sample["image"], set()).add(shard.file)
    assert len(shard_of_image) == 12 and all(len(files) == 1 for files in shard_of_image.values())
    assert read_manifest(tmp_path / "two").to_json() == manifest.to_json()  # what rank 0 merged is what came back
    assert leftovers(tmp_path / "two") == []
    ids = [s["id"] for s in FeatureCache(tmp_path / "two").samples]
    assert ids == [s["id"] for s in FeatureCache(tmp_path / "one").samples]  # contiguous rank blocks keep the input order
    assert_same_cache(tmp_path / "two", tmp_path / "one")


KILL_SCRIPT = '''
import os, signal, sys
import torch.distributed as dist
from token_reduction.encoders.pixels import PixelEncoder
from token_reduction.extraction.run import extract


class DiesOnRankOne(PixelEncoder):
    """Rank 1 is killed (SIGKILL: no cleanup of any kind) on its second encoder call."""

    calls = 0

    def encode(self, pixels):
        type(self).calls += 1
        if dist.is_initialized() and dist.get_rank() == 1 and type(self).calls == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().encode(pixels)


if __name__ == "__main__":  # spawned workers import this file and must not rerun it
    extract(DiesOnRankOne("pixels:16@64"), sys.argv[1], sys.argv[2], batch_size=2, shard_size=2, progress=False,
            accelerator="cpu", devices=2, strategy="ddp_spawn")
'''


def test_resume_under_two_processes_after_a_kill(images: Path, reference: Path, tmp_path: Path) -> None:
    script = tmp_path / "killed_extract.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "cache"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = subprocess.run([sys.executable, str(script), str(images), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode != 0, killed.stderr[-3000:]
    partial = read_progress(str(out))
    assert not partial.complete and 2 <= partial.num_samples < 12  # rank 1 stored one shard before it died
    assert read_manifest(out).num_samples == 0 and (out / partial_manifest_name(1)).exists()  # progress lives in per-rank manifests
    written = {shard.file for shard in partial.shards}
    (out / "shard-r001-00007.safetensors").write_bytes(b"written, then killed before its manifest")
    (out / ".shard-r000-00009.safetensors.k1ll3d.tmp").write_bytes(b"killed mid-write")

    resumed = extract(ENCODER, images, out, **OPTIONS, **TWO_CPU_PROCESSES)
    assert resumed.complete and resumed.num_samples == 12
    assert written <= {shard.file for shard in resumed.shards}  # finished shards were kept, not redone
    assert leftovers(out) == [] and not (out / "shard-r001-00007.safetensors").exists()  # debris of the kill is gone
    assert_same_cache(out, reference)
    again = extract(ENCODER, images, out, **OPTIONS, **TWO_CPU_PROCESSES)  # finished: starts no processes
    assert again.to_json() == resumed.to_json()


def test_growing_a_cache_numbers_new_shards_after_the_old(images: Path, reference: Path, tmp_path: Path) -> None:
    first = extract(ENCODER, images, tmp_path / "cache", max_images=5, **OPTIONS)
    assert first.complete and [s.file for s in first.shards] == [f"shard-r000-{i:05d}.safetensors" for i in range(3)]
    grown = extract(ENCODER, images, tmp_path / "cache", **OPTIONS)
    assert [s.file for s in grown.shards][:3] == [s.file for s in first.shards] and grown.shards[3].file == "shard-r000-00003.safetensors"
    assert_same_cache(tmp_path / "cache", reference)


def test_memory_filesystem_round_trip(images: Path, reference: Path, tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    base = f"memory://{tmp_path.name}"
    for path in sorted(images.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{base}/images/{path.relative_to(images).as_posix()}", path.read_bytes())
    try:
        manifest = extract(ENCODER, f"{base}/images", f"{base}/cache", **OPTIONS)
        assert manifest.complete and manifest.num_samples == 12 and manifest.extras == {"text": [16]}  # sidecars read too
        assert manifest.info["images_root"] == f"memory:///{tmp_path.name}/images"
        names = Store(f"{base}/cache").names()
        assert "manifest.json" in names and not [n for n in names if n.startswith(("manifest.rank", "."))]
        assert extract(ENCODER, f"{base}/images", f"{base}/cache", **OPTIONS).to_json() == manifest.to_json()
        root, found = find_images(f"{base}/images/**/*.png")
        assert root == f"memory:///{tmp_path.name}/images" and [i.rel for i in found] == [i.rel for i in find_images(images)[1]]
        local = Store(f"{base}/cache").download(tmp_path / "copy")  # training reads a local (or mounted) cache
        assert_same_cache(local, reference)
        with pytest.raises(CacheError, match="different features"):
            extract("pixels:8@64", f"{base}/images", f"{base}/cache", **OPTIONS)
    finally:
        fs.rm(f"/{tmp_path.name}", recursive=True)


def test_file_urls(images: Path, reference: Path, tmp_path: Path) -> None:
    manifest = extract(ENCODER, f"file://{images}", f"file://{tmp_path / 'cache'}", **OPTIONS)
    assert manifest.complete and manifest.num_samples == 12
    assert_same_cache(tmp_path / "cache", reference)


def test_cli_takes_lightning_placement_flags(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--encoder", ENCODER, "--images", str(images), "--out", str(tmp_path / "cache"), "--num-workers", "0", "--no-progress",
            "--accelerator", "cpu", "--devices", "1", "--strategy", "auto", "--num-nodes", "1", "--max-images", "3"]
    assert extract_main(argv) == 0
    assert "3 samples from 3 images" in capsys.readouterr().out
    assert read_manifest(tmp_path / "cache").shards[0].rank == 0
    conflict = ["--encoder", ENCODER, "--images", str(images), "--out", str(tmp_path / "c2"), "--device", "cpu", "--accelerator", "cpu"]
    assert extract_main(conflict) == 2
    assert "not both" in capsys.readouterr().err
