"""The embedded default image set: reproducible, held-out, honest boxes, atomic and idempotent builds."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from token_reduction.data import default_set as ds

SIZE = 112
N = 24
SEED = 1
PAGE_KINDS = ("document", "receipt", "chart", "photo_text")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("a") / "set"
    return ds.build_default_set(out, num_images=N, size=SIZE, seed=SEED, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sidecar(root: Path, entry: dict) -> dict:
    return json.loads((root / entry["sidecar"]).read_text())


def test_same_seed_gives_byte_identical_files(built: Path, tmp_path: Path) -> None:
    again = ds.build_default_set(tmp_path / "b", num_images=N, size=SIZE, seed=SEED, progress=False)
    first, second = _files(built), _files(again)
    assert list(first) == list(second)
    assert first == second
    other = ds.build_default_set(tmp_path / "c", num_images=N, size=SIZE, seed=SEED + 1, progress=False)
    changed = [name for name, data in _files(other).items() if name.endswith(".png") and first[name] != data]
    assert len(changed) == N


def test_output_contract(built: Path) -> None:
    entries = ds.load_index(built)
    assert len(entries) == N
    assert {e["kind"] for e in entries} == set(ds.KINDS)
    assert {e["split"] for e in entries} == set(ds.SPLITS)
    for entry in entries:
        image = Image.open(entry["path"])
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        sidecar = _sidecar(built, entry)
        assert list(sidecar) == ["kind", "split", "source", "boxes"]
        assert [sidecar[k] for k in ("kind", "split", "source")] == [entry[k] for k in ("kind", "split", "source")]
        if entry["kind"] == "photo":
            assert sidecar["boxes"] == []
            assert entry["source"].split(":")[0] in ("skimage", "sklearn")
        else:
            assert len(sidecar["boxes"]) >= (1 if entry["kind"] == "photo_text" else 3), entry
            assert entry["source"].startswith(f"render:{entry['kind']}:")
        for x0, y0, x1, y1 in sidecar["boxes"]:
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE


def test_text_boxes_cover_ink(tmp_path: Path) -> None:
    root = ds.build_default_set(tmp_path / "ink", num_images=40, size=224, seed=5, progress=False)
    checked = 0
    for entry in ds.load_index(root):
        if entry["kind"] == "photo":
            continue
        gray = np.asarray(Image.open(entry["path"]).convert("L"), dtype=np.float32)
        boxes = _sidecar(root, entry)["boxes"]
        inside = np.zeros(gray.shape, dtype=bool)
        for x0, y0, x1, y1 in boxes:
            patch = gray[y0:y1, x0:x1]
            # every box holds ink that stands out from its surroundings (dark on paper, light on bands)
            assert patch.max() - patch.min() > 80, (entry["image"], (x0, y0, x1, y1))
            inside[y0:y1, x0:x1] = True
        if entry["kind"] in ("document", "receipt"):
            paper = np.median(gray[~inside])
            assert gray[inside].mean() < paper - 25, entry["image"]
            # boxes are tight: most pixels in them are still paper, not a whole-page box
            assert inside.mean() < 0.6
        checked += 1
    assert checked >= 15


def test_document_ink_lies_in_boxes(built: Path) -> None:
    """Text drawn without a box would teach the selector that text is unimportant."""
    for entry in ds.load_index(built):
        if entry["kind"] != "document":
            continue
        gray = np.asarray(Image.open(entry["path"]).convert("L"), dtype=np.float32)
        inside = np.zeros(gray.shape, dtype=bool)
        for x0, y0, x1, y1 in _sidecar(built, entry)["boxes"]:
            inside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
        ink = gray < np.median(gray) - 100
        rows_with_rule = ink.mean(axis=1) > 0.5  # the optional horizontal rule under the title
        ink[rows_with_rule] = False
        assert ink.sum() > 50
        assert (ink & ~inside).sum() / ink.sum() < 0.02, entry["image"]


def test_test_sources_never_appear_in_train(built: Path) -> None:
    def parts(source: str) -> set[str]:
        if source.startswith("render:"):
            _, kind, rest = source.split(":", 2)
            family, _, photo = rest.partition("@")
            return {f"font:{family}"} | ({f"photo:{photo}"} if photo else set())
        return {f"photo:{source}"}

    entries = ds.load_index(built)
    seen = {s: set().union(*(parts(e["source"]) for e in entries if e["split"] == s)) for s in ds.SPLITS}
    assert seen["test"] and not seen["test"] & (seen["train"] | seen["val"])
    assert any(p.startswith("font:") for p in seen["test"]) and any(p.startswith("photo:") for p in seen["test"])
    spec = ds.load_spec()
    held_out = {f"photo:{source}" for source in spec["photo_sources"]["test"]}
    assert {p for p in seen["test"] if p.startswith("photo:")} <= held_out
    index = json.loads((built / ds.INDEX_NAME).read_text())
    assert set(index["held_out"]["photo_sources"]) == set(spec["photo_sources"]["test"])


def test_second_call_is_idempotent(built: Path) -> None:
    index = built / ds.INDEX_NAME
    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    assert ds.build_default_set(built, num_images=N, size=SIZE, seed=SEED, progress=False) == built
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before
    assert json.loads(index.read_text())["complete"] is True


def test_changed_parameters_rebuild(tmp_path: Path) -> None:
    out = ds.build_default_set(tmp_path / "set", num_images=6, size=64, seed=0, progress=False)
    out = ds.build_default_set(out, num_images=7, size=64, seed=0, progress=False)
    assert len(ds.load_index(out)) == 7
    assert not list(tmp_path.glob(".set.*")), "temp or old folders left behind"


def test_partial_builds_are_not_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = ds.build_default_set(tmp_path / "set", num_images=6, size=64, seed=0, progress=False)
    params = {"num_images": 6, "size": 64, "seed": 0}
    assert ds.is_complete(out, params)
    victim = ds.load_index(out)[-1]
    Path(victim["path"]).unlink()  # a file went missing
    assert not ds.is_complete(out, params)
    index = json.loads((out / ds.INDEX_NAME).read_text())
    index["complete"] = False
    (out / ds.INDEX_NAME).write_text(json.dumps(index))
    assert not ds.is_complete(out)
    with pytest.raises(FileNotFoundError, match="no complete default set"):
        ds.load_index(out)
    ds.build_default_set(out, num_images=6, size=64, seed=0, progress=False)
    assert ds.is_complete(out, params) and Path(victim["path"]).is_file()

    # a build killed midway leaves a hidden temp folder from a dead process: never used, cleaned up
    dead = tmp_path / ".fresh.building-999999999-deadbeef"
    (dead / "photos").mkdir(parents=True)
    (dead / ds.INDEX_NAME).write_text(json.dumps({"builder": ds.BUILDER, "complete": False}))
    assert not ds.is_complete(tmp_path / "fresh")

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setitem(ds.RENDERERS, "chart", boom)
    with pytest.raises(RuntimeError, match="killed"):
        ds.build_default_set(tmp_path / "fresh", num_images=12, size=64, seed=0, progress=False)
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        ds.build_default_set(tmp_path / "mine", num_images=3, size=64, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_plan_counts_follow_the_spec() -> None:
    spec = ds.load_spec()
    assert ds.plan_counts(spec, spec["num_images"]) == spec["counts"]
    total = spec["num_images"]
    pages = sum(sum(spec["counts"][k].values()) for k in PAGE_KINDS)
    tests = sum(c["test"] for c in spec["counts"].values())
    assert 0.40 <= pages / total <= 0.50 and 0.15 <= tests / total <= 0.20
    for n in (1, 5, 12, 50, 1000):
        plan = ds.plan_counts(spec, n)
        assert sum(sum(c.values()) for c in plan.values()) == n
        if n >= 5:
            assert all(sum(c.values()) >= 1 for c in plan.values())
    with pytest.raises(ValueError, match="at least 1"):
        ds.plan_counts(spec, 0)


def test_photo_sources_load_offline_and_downloads_are_skipped() -> None:
    spec = ds.load_spec()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for source in spec["photo_sources"]["train"] + spec["photo_sources"]["test"]:
            image = ds.load_photo(source)
            assert image is not None and image.mode == "RGB" and min(image.size) >= 150, source
    for source in ("skimage:brain", "skimage:eagle", "skimage:lily", "flickr:cat"):
        with pytest.warns(UserWarning, match="skipping"):
            assert ds.load_photo(source) is None


def test_spec_errors_name_the_problem(tmp_path: Path) -> None:
    spec = ds.load_spec()
    spec["photo_sources"]["test"].append(spec["photo_sources"]["train"][0])
    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="both train and test"):
        ds.load_spec(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        ds.load_spec(tmp_path / "missing.json")


def test_default_dir_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert ds.default_set_dir() == repo / "data" / "default"
    script = importlib.util.spec_from_file_location("build_default_set", repo / "data" / "build_default_set.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path / "cli"), "--num-images", "5", "--size", "48", "--quiet"]) == 0
    assert "5 images" in capsys.readouterr().out
    assert len(ds.load_index(tmp_path / "cli")) == 5
    assert os.listdir(tmp_path) == ["cli"]
