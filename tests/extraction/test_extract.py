"""``token-reduction extract``: inputs, sample records, extras, resume and failure modes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_clip, save_tiny_siglip

from token_reduction.cache.feature_cache import FeatureCache
from token_reduction.cache.manifest import CacheError, read_manifest
from token_reduction.encoders import load_encoder
from token_reduction.cli.extract import extract_main
from token_reduction.extraction.run import extract
from token_reduction.extraction.inputs import find_images, load_image
from token_reduction.extraction import read_progress


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "clip")


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("models") / "siglip")


def _write_images(folder: Path, count: int, size: tuple[int, int] = (40, 56), seed: int = 0) -> list[str]:
    """``count`` random PNGs (half of them in a subfolder); returns their relative paths, sorted."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        rel = f"sub/img{i:02d}.png" if i % 2 else f"img{i:02d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / rel)
        names.append(rel)
    return sorted(names)


def _by_image(cache: FeatureCache, name: str = "features") -> dict[str, torch.Tensor]:
    rows: dict[str, list[int]] = {}
    for index, sample in enumerate(cache.samples):
        rows.setdefault(sample["id"], []).append(index)
    assert all(len(r) == 1 for r in rows.values()), "a sample id appears twice"
    return {sid: cache.read(r[0], (name,))[name] for sid, r in rows.items()}


def test_folder_extract_writes_a_readable_cache(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "images", 5)
    (tmp_path / "images" / "notes.txt").write_text("not an image, ignored")
    manifest = extract("pixels:8@32", tmp_path / "images", tmp_path / "cache", batch_size=2, shard_size=2, progress=False)
    assert manifest.complete and manifest.num_samples == 5 and manifest.skipped == []
    assert (manifest.encoder, manifest.layer, manifest.grid, manifest.dim, manifest.dtype) == ("pixels:8@32", None, (4, 4), 192, "float16")
    assert manifest.extras == {} and manifest.info["anyres"] is False
    assert manifest.info["images_root"] == str((tmp_path / "images").resolve())
    cache = FeatureCache(tmp_path / "cache", verify="checksum")
    assert [s["image"] for s in cache.samples] == names and [s["id"] for s in cache.samples] == names
    assert cache.samples[0]["crop"] == "full" and cache.samples[0]["crop_box"] == [0, 0, 56, 40]
    encoder = load_encoder("pixels:8@32")
    direct = encoder.encode(encoder.preprocess([load_image(tmp_path / "images" / names[3])]))["features"][0]
    torch.testing.assert_close(cache.read(3)["features"].float(), direct.half().float())


def test_text_extra_marks_the_boxed_patches(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), "white").save(images / "page.png")
    sidecar = {"kind": "page", "split": "val", "source": "render:test", "boxes": [[0, 0, 32, 16], [48, 56, 56, 64]]}
    (images / "page.json").write_text(json.dumps(sidecar))
    Image.new("RGB", (64, 64), "gray").save(images / "photo.png")  # no sidecar: no text
    manifest = extract("pixels:16@64", images, tmp_path / "cache", dtype="fp32", progress=False)
    assert manifest.extras == {"text": [16]}
    cache = FeatureCache(tmp_path / "cache")
    page, photo = cache.samples
    assert (page["kind"], page["split"], page["source"]) == ("page", "val", "render:test") and "split" not in photo
    text = cache.read_many([0, 1], ("text",))["text"]
    expected = torch.zeros(4, 4)
    expected[0, 0] = expected[0, 1] = 1.0  # box 1 fills row 0, columns 0-1
    expected[3, 3] = 0.25  # box 2 covers an 8x8 quarter of the last patch
    torch.testing.assert_close(text[0].view(4, 4), expected)
    assert text[1].sum() == 0


def test_text_extra_follows_the_clip_center_crop(tmp_path: Path, tiny_clip: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 32), "white").save(images / "wide.png")  # shortest edge already 32: crop x 16..48
    (images / "wide.json").write_text(json.dumps({"boxes": [[0, 0, 16, 32], [16, 0, 24, 32]]}))
    extract(str(tiny_clip), images, tmp_path / "cache", dtype="fp32", progress=False)
    cache = FeatureCache(tmp_path / "cache")
    assert cache.samples[0]["crop_box"] == [16, 0, 48, 32]
    text = cache.read(0, ("text",))["text"].view(4, 4)
    expected = torch.zeros(4, 4)
    expected[:, 0] = 1.0  # the first box is cropped away, the second becomes patch column 0
    torch.testing.assert_close(text, expected)


def test_anyres_samples_and_attention(tmp_path: Path, tiny_siglip: Path) -> None:
    names = _write_images(tmp_path / "images", 2, size=(32, 64))
    manifest = extract(str(tiny_siglip), tmp_path / "images", tmp_path / "cache", anyres=True, pinpoints="32x64,64x32",
                       store_attention=True, dtype="fp32", shard_size=1, progress=False)
    assert manifest.extras == {"attention": [16]}
    assert manifest.info["pinpoints"] == [[32, 64], [64, 32]] and manifest.info["anyres"] is True
    cache = FeatureCache(tmp_path / "cache")
    ids = [s["id"] for s in cache.samples]
    assert ids == [f"{n}#{c}" for n in names for c in ("base", "r0c0", "r0c1")]
    assert [s["crop"] for s in cache.samples[:3]] == ["base", [0, 0], [0, 1]]
    assert [s["crop_box"] for s in cache.samples[:3]] == [[0, 0, 64, 32], [0, 0, 32, 32], [32, 0, 64, 32]]
    assert len(manifest.shards) == 2  # shards end at image boundaries: all crops of one image together
    attention = cache.read_many(range(6), ("attention",))["attention"]
    torch.testing.assert_close(attention.sum(1), torch.ones(6), rtol=0, atol=1e-4)


def test_resume_after_a_crash_stores_every_image_once(tmp_path: Path, tiny_clip: Path) -> None:
    names = _write_images(tmp_path / "images", 7)
    clean = extract(str(tiny_clip), tmp_path / "images", tmp_path / "clean", batch_size=2, shard_size=2, dtype="fp32", progress=False)
    encoder = load_encoder(str(tiny_clip))
    real_encode, calls = encoder.encode, []

    def crashing_encode(pixels: torch.Tensor) -> dict:
        calls.append(len(pixels))
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_encode(pixels)

    encoder.encode = crashing_encode
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(encoder, tmp_path / "images", tmp_path / "cache", batch_size=2, shard_size=2, dtype="fp32", progress=False)
    partial = read_progress(str(tmp_path / "cache"))  # manifest.json plus the per-rank manifest in flight
    assert not partial.complete and partial.num_samples == 4  # two batches of two made it
    calls.clear()
    encoder.encode = real_encode
    resumed = extract(str(tiny_clip), tmp_path / "images", tmp_path / "cache", batch_size=2, shard_size=2, dtype="fp32", progress=False)
    assert resumed.complete and resumed.num_samples == clean.num_samples == 7
    ours, theirs = _by_image(FeatureCache(tmp_path / "cache")), _by_image(FeatureCache(tmp_path / "clean"))
    assert sorted(ours) == names
    for name in names:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-5)
    again = extract(str(tiny_clip), tmp_path / "images", tmp_path / "cache", dtype="fp32", progress=False)
    assert again.num_samples == 7  # a rerun of a finished cache adds nothing


KILL_SCRIPT = """
import os, signal, sys
from token_reduction.encoders.pixels import PixelEncoder
from token_reduction.extraction.run import extract
real, calls = PixelEncoder.encode, []
def encode(self, pixels):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, like kill -9
    return real(self, pixels)
PixelEncoder.encode = encode
extract("pixels:8@32", sys.argv[1], sys.argv[2], batch_size=2, shard_size=2, dtype="fp32", progress=False)
"""


def test_resume_after_kill_9(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "images", 6)
    args = [str(tmp_path / "images"), str(tmp_path / "cache")]
    repo = Path(__file__).resolve().parents[2]
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, *args], cwd=repo, capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = read_progress(str(tmp_path / "cache"))
    assert not partial.complete and partial.num_samples == 4
    extract("pixels:8@32", *args, batch_size=2, shard_size=2, dtype="fp32", progress=False)
    extract("pixels:8@32", args[0], tmp_path / "clean", dtype="fp32", progress=False)
    ours, theirs = _by_image(FeatureCache(tmp_path / "cache")), _by_image(FeatureCache(tmp_path / "clean"))
    assert sorted(ours) == names == sorted(theirs)
    for name in names:
        torch.testing.assert_close(ours[name], theirs[name])


def test_existing_cache_of_another_encoder_is_left_alone(tmp_path: Path) -> None:
    _write_images(tmp_path / "images", 2)
    extract("pixels:8@32", tmp_path / "images", tmp_path / "cache", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
    with pytest.raises(CacheError, match="different features"):
        extract("pixels:16@32", tmp_path / "images", tmp_path / "cache", progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()} == before
    with pytest.raises(CacheError, match="anyres=False but this run has True"):
        extract("pixels:8@32", tmp_path / "images", tmp_path / "cache", anyres=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()} == before


def test_missing_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--images: no such file or folder"):
        extract("pixels:8@32", tmp_path / "nope", tmp_path / "cache", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        extract("pixels:8@32", tmp_path / "empty", tmp_path / "cache", progress=False)
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(ValueError, match="no images found"):
        extract("pixels:8@32", tmp_path / "empty", tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()


def test_corrupt_images_are_skipped_with_a_reason(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "images", 3)
    (tmp_path / "images" / "broken.png").write_bytes(b"definitely not a png")
    (tmp_path / "images" / "bad_sidecar.png").write_bytes((tmp_path / "images" / names[0]).read_bytes())
    (tmp_path / "images" / "bad_sidecar.json").write_text("{not json")
    manifest = extract("pixels:8@32", tmp_path / "images", tmp_path / "cache", num_workers=1, progress=False)
    assert manifest.complete and manifest.num_samples == 3
    reasons = {entry["path"]: entry["reason"] for entry in read_manifest(tmp_path / "cache").skipped}
    assert set(reasons) == {"broken.png", "bad_sidecar.png"}
    assert "UnidentifiedImageError" in reasons["broken.png"] and "not valid JSON" in reasons["bad_sidecar.png"]
    rerun = extract("pixels:8@32", tmp_path / "images", tmp_path / "cache", progress=False)
    assert len(rerun.skipped) == 2 and rerun.num_samples == 3


def test_glob_and_list_file_inputs(tmp_path: Path) -> None:
    names = _write_images(tmp_path / "images", 4)
    root, inputs = find_images(str(tmp_path / "images" / "**" / "*.png"))
    assert root == (tmp_path / "images").resolve() and [i.rel for i in inputs] == names
    listing = tmp_path / "images" / "list.txt"
    listing.write_text(f"# two images and a missing one\n{names[1]}\n\n{names[0]}\nmissing.png\n")
    manifest = extract("pixels:8@32", listing, tmp_path / "cache", progress=False)
    assert [s["image"] for shard in manifest.shards for s in shard.samples] == sorted(names[:2])
    assert [entry["path"] for entry in manifest.skipped] == ["missing.png"]
    first = extract("pixels:8@32", tmp_path / "images", tmp_path / "cache2", max_images=3, progress=False)
    assert [s["image"] for shard in first.shards for s in shard.samples] == names[:3]


def test_layer_out_of_range_creates_nothing(tmp_path: Path, tiny_clip: Path) -> None:
    _write_images(tmp_path / "images", 1)
    with pytest.raises(ValueError, match="out of range"):
        extract(str(tiny_clip), tmp_path / "images", tmp_path / "cache", layer=7, progress=False)
    assert not (tmp_path / "cache").exists()


def test_cli_entry_point(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_clip: Path) -> None:
    _write_images(tmp_path / "images", 3)
    argv = ["--encoder", str(tiny_clip), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "cache"),
            "--layer", "-1", "--batch-size", "2", "--device", "cpu", "--dtype", "bf16", "--num-workers", "0",
            "--no-progress", "--store-attention"]
    assert extract_main(argv) == 0
    assert "3 samples from 3 images" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "cache")
    assert (manifest.layer, manifest.dtype, manifest.extras) == (-1, "bfloat16", {"attention": [16]})
    assert manifest.info["layer_index"] == 3 and manifest.info["cls_dropped"] is True
    assert extract_main(["--encoder", "pixels:8@32", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "c2")]) == 2
    assert "--images: no such file or folder" in capsys.readouterr().err


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)
