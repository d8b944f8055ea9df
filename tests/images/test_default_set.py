"""The embedded default image set: reproducible, held-out, honest boxes and words, atomic and idempotent builds."""

from __future__ import annotations

import colorsys
import importlib.util
import json
import os
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from token_reduction.images import default_set as ds
from token_reduction.images import layouts
from token_reduction.images.pages import font_files
from token_reduction.images.styles import FILLS, TRAIN_HUES, make_style

SIZE = 96
N = 40
SEED = 1
PAGE_KINDS = tuple(k for k in ds.KINDS if k not in ("photo", "blank"))
HELD_OUT_KINDS = ("table", "form")
BLANK_VARIANTS = ("flat", "noise", "gradient")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("a") / "set"
    return ds.build_default_set(out, num_images=N, size=SIZE, seed=SEED, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _sidecar(root: Path, entry: dict) -> dict:
    return json.loads((root / entry["sidecar"]).read_text())


def _family(source: str) -> str | None:
    """The font family of a rendered page's source (``render:KIND:FAMILY[@PHOTO]``), else None."""
    if not source.startswith("render:") or source.startswith("render:blank:"):
        return None
    return source.split(":", 2)[2].partition("@")[0]


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
        keys = ["kind", "split", "boxes", "words", "source", "group"]
        assert list(sidecar) == (keys if entry["kind"] == "photo" else [*keys, "style"]), entry["image"]
        for key in ("kind", "split", "source", "group"):
            assert sidecar[key] == entry[key], (entry["image"], key)
        assert entry["num_boxes"] == len(sidecar["boxes"])
        if entry["kind"] == "photo":
            assert sidecar["boxes"] == [] and sidecar["words"] == []
            assert entry["source"].split(":")[0] in ("skimage", "sklearn")
        elif entry["kind"] == "blank":
            assert sidecar["boxes"] == [] and sidecar["words"] == []
            assert sidecar["style"] in BLANK_VARIANTS and entry["source"] == f"render:blank:{sidecar['style']}"
        else:
            assert len(sidecar["boxes"]) >= (1 if entry["kind"] == "photo_text" else 3), entry
            assert entry["source"].startswith(f"render:{entry['kind']}:")
            group, _, fill = sidecar["style"].partition("/")
            assert group == entry["group"] and fill in FILLS, sidecar["style"]
        for x0, y0, x1, y1 in sidecar["boxes"]:
            assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    index = json.loads((built / ds.INDEX_NAME).read_text())
    assert index["builder_version"] == ds.BUILDER_VERSION == 2


def test_words_pair_up_with_boxes(built: Path) -> None:
    """``words[i]`` is the text drawn in ``boxes[i]``: one non-empty word per box."""
    for entry in ds.load_index(built):
        sidecar = _sidecar(built, entry)
        words, boxes = sidecar["words"], sidecar["boxes"]
        assert len(words) == len(boxes), entry["image"]
        for word in words:
            assert isinstance(word, str) and word.strip() == word and word, (entry["image"], word)
            assert not any(c.isspace() for c in word), (entry["image"], word)
        if entry["kind"] in PAGE_KINDS:
            assert words, entry["image"]


def test_every_image_has_a_colour_group(built: Path) -> None:
    pages_seen = set()
    for entry in ds.load_index(built):
        group = entry["group"]
        if entry["kind"] in ("photo", "photo_text"):
            assert group == "photo", entry["image"]
        elif entry["kind"] == "blank":
            assert group in ("white", "tinted", "dark")
            assert group == ds.blank_group(Image.open(entry["path"]).convert("RGB")), entry["image"]
        else:
            assert group in ds.PAGE_GROUPS, entry["image"]
            pages_seen.add(group)
    assert pages_seen == set(ds.PAGE_GROUPS)  # every page group is drawn, even in a small build


def test_held_out_layouts_only_in_test(built: Path) -> None:
    entries = ds.load_index(built)
    for kind in HELD_OUT_KINDS:
        splits = {e["split"] for e in entries if e["kind"] == kind}
        assert splits == {"test"}, (kind, splits)
    train_kinds = {e["kind"] for e in entries if e["split"] in ("train", "val")}
    assert not train_kinds & set(HELD_OUT_KINDS)
    assert train_kinds == set(ds.KINDS) - set(HELD_OUT_KINDS)
    index = json.loads((built / ds.INDEX_NAME).read_text())
    assert index["held_out"]["layouts"] == list(HELD_OUT_KINDS)
    spec = ds.load_spec()
    for n in (1, 10, 40, 333, spec["num_images"]):
        plan = ds.plan_counts(spec, n)
        assert all(plan[k]["train"] == plan[k]["val"] == 0 for k in HELD_OUT_KINDS), (n, plan)


def test_blank_images_are_near_uniform(built: Path) -> None:
    blanks = [e for e in ds.load_index(built) if e["kind"] == "blank"]
    assert len(blanks) >= 3
    for entry in blanks:
        pixels = np.asarray(Image.open(entry["path"]), dtype=np.float32)
        variant = _sidecar(built, entry)["style"]
        std = pixels.reshape(-1, 3).std(axis=0)
        steps = max(np.abs(np.diff(pixels, axis=0)).max(), np.abs(np.diff(pixels, axis=1)).max())
        if variant == "flat":
            assert std.max() == 0, entry["image"]
        elif variant == "noise":
            assert std.max() < 6, (entry["image"], std)
        else:  # a soft gradient: large-scale change, but no edges
            assert steps <= 3, (entry["image"], steps)
        assert std.max() < 6 or steps <= 3, entry["image"]


def test_text_boxes_cover_ink(tmp_path: Path) -> None:
    root = ds.build_default_set(tmp_path / "ink", num_images=40, size=224, seed=5, progress=False)
    checked = 0
    for entry in ds.load_index(root):
        if entry["kind"] in ("photo", "blank"):
            continue
        rgb = np.asarray(Image.open(entry["path"]), dtype=np.float32)
        gray = np.asarray(Image.open(entry["path"]).convert("L"), dtype=np.float32)
        boxes = _sidecar(root, entry)["boxes"]
        inside = np.zeros(gray.shape, dtype=bool)
        for x0, y0, x1, y1 in boxes:
            patch = rgb[y0:y1, x0:x1].reshape(-1, 3)
            # every box holds ink that stands out from what is behind it (in some colour channel),
            # whatever the colour scheme: dark on paper, light on dark pages, any ink on panels
            assert np.ptp(patch, axis=0).max() > 80, (entry["image"], (x0, y0, x1, y1))
            inside[y0:y1, x0:x1] = True
        if entry["kind"] in ("document", "receipt"):
            paper = np.median(gray[~inside])
            shift = gray[inside].mean() - paper
            if entry["group"] in ("white", "tinted"):
                assert shift < -25, entry["image"]  # dark ink on light paper
            elif entry["group"] == "dark":
                assert shift > 25, entry["image"]  # light ink on dark paper
            else:
                assert abs(shift) > 15, entry["image"]
            # boxes are tight: most pixels in them are still paper, not a whole-page box
            assert inside.mean() < 0.6
        checked += 1
    assert checked >= 20


def test_document_ink_lies_in_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text drawn without a box would teach the selector that text is unimportant.

    The renderer is wrapped to learn each page's style, so ink is found exactly (anything that
    differs from the style's blank canvas), on every fill: flat, gradient or textured.
    """
    assert ds.RENDERERS is layouts.RENDERERS
    drawn = []
    original = layouts.RENDERERS["document"]

    def spy(rng, size, fonts, style, *args):
        page = original(rng, size, fonts, style, *args)
        drawn.append((style, np.asarray(page[0]).copy()))
        return page

    monkeypatch.setitem(layouts.RENDERERS, "document", spy)
    size = 112
    root = ds.build_default_set(tmp_path / "docs", num_images=80, size=size, seed=3, progress=False)
    documents = [e for e in ds.load_index(root) if e["kind"] == "document"]
    assert len(documents) == len(drawn) >= 8
    checked = 0
    for entry, (style, image) in zip(documents, drawn):
        pixels = np.asarray(Image.open(entry["path"]))
        assert np.array_equal(pixels, image) and entry["group"] == style.group
        if style.group == "panels":  # coloured bands and call-out boxes are drawn, but are not ink
            continue
        blank = np.asarray(style.canvas(size), dtype=np.float32)
        ink = np.abs(pixels.astype(np.float32) - blank).max(axis=2) > 40
        rows_with_rule = ink.mean(axis=1) > 0.5  # the optional horizontal rule under the title
        ink[rows_with_rule] = False
        inside = np.zeros(ink.shape, dtype=bool)
        for x0, y0, x1, y1 in _sidecar(root, entry)["boxes"]:
            inside[max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1] = True
        assert ink.sum() > 50, entry["image"]
        assert (ink & ~inside).sum() / ink.sum() < 0.02, (entry["image"], style.describe())
        checked += 1
    assert checked >= 5 and {s.fill for s, _ in drawn} - {"flat"}  # textured pages were checked too


def test_test_sources_never_appear_in_train(built: Path) -> None:
    def parts(source: str) -> set[str]:
        if source.startswith("render:blank:"):
            return set()
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


def test_held_out_fonts_never_in_train(built: Path) -> None:
    spec = ds.load_spec()
    index = json.loads((built / ds.INDEX_NAME).read_text())
    held_out = set(index["held_out"]["fonts"])
    assert held_out == {f for fs in spec["page_fonts"]["test"].values() for f in fs}
    train_fonts = {f for kind, fs in spec["page_fonts"]["train"].items() for f in fs}
    assert held_out and not held_out & train_fonts  # the spec itself keeps them apart
    used = {split: {_family(e["source"]) for e in ds.load_index(built) if e["split"] == split} - {None} for split in ds.SPLITS}
    assert used["train"] and not used["train"] & held_out
    assert not used["val"] & held_out
    assert used["test"] and used["test"] <= held_out


def test_train_receipt_tables_use_train_hues() -> None:
    spec = ds.load_spec()
    fonts = font_files(spec["font_files"]["DejaVuSansMono"], Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    outside = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image, _, _ = layouts.RENDERERS["receipt"](rng, 64, fonts, make_style(rng, "white", False))
        table = np.median(np.asarray(image, dtype=np.float32)[:, 0], axis=0) / 255  # the left edge is table, not paper
        h, s, v = colorsys.rgb_to_hsv(*table)
        if s >= 0.3 and v >= 0.3 and not any(low - 0.02 <= x < high + 0.02 for low, high in TRAIN_HUES for x in (h, h - 1)):
            outside.append((seed, round(h, 3)))
    assert outside == []


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

    # default_set looks renderers up in the table it imported from layouts
    assert ds.RENDERERS is layouts.RENDERERS
    monkeypatch.setitem(layouts.RENDERERS, "chart", boom)
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


def test_a_set_built_by_the_former_module_is_rebuilt_not_refused(tmp_path: Path) -> None:
    """A demo folder from before the package was laid out by stage (builder ``token_reduction.data.default_set``)."""
    old = tmp_path / "set"
    (old / "photos").mkdir(parents=True)
    (old / "photos" / "p0.png").write_bytes(b"old")
    index = {"builder": ds.FORMER_BUILDERS[0], "builder_version": 2, "spec_sha256": "an older spec", "complete": True}
    (old / ds.INDEX_NAME).write_text(json.dumps(index))
    built = ds.build_default_set(old, num_images=12, size=64, seed=0, progress=False)
    assert ds.is_complete(built) and json.loads((built / ds.INDEX_NAME).read_text())["builder"] == ds.BUILDER
    assert not (built / "photos" / "p0.png").exists()


def test_plan_counts_follow_the_spec() -> None:
    spec = ds.load_spec()
    assert ds.plan_counts(spec, spec["num_images"]) == spec["counts"]
    total = spec["num_images"]
    pages = sum(sum(spec["counts"][k].values()) for k in PAGE_KINDS)
    tests = sum(c["test"] for c in spec["counts"].values())
    trains = sum(c["train"] for c in spec["counts"].values())
    assert pages / total >= 0.4 and 0.05 <= tests / total <= 0.25 and trains / total >= 0.7
    assert all(spec["counts"][k]["test"] > 0 for k in ds.KINDS)
    for n in (1, 5, 9, 10, 12, 40, 50, 1000):
        plan = ds.plan_counts(spec, n)
        assert set(plan) == set(ds.KINDS)
        assert sum(sum(c.values()) for c in plan.values()) == n
        if n >= len(ds.KINDS):
            assert all(sum(c.values()) >= 1 for c in plan.values()), (n, plan)
        for kind, counts in plan.items():
            if sum(counts.values()) >= 2:
                assert counts["test"] >= 1, (n, kind, counts)
    for n in (600, 2400):  # large sets keep the spec's shares per kind and split
        plan = ds.plan_counts(spec, n)
        for kind in ds.KINDS:
            for split in ds.SPLITS:
                assert abs(plan[kind][split] - spec["counts"][kind][split] * n / total) <= 2, (n, kind, split)
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
    bad = tmp_path / "spec.json"

    def check(spec: dict, message: str) -> None:
        bad.write_text(json.dumps(spec))
        with pytest.raises(ValueError, match=message):
            ds.load_spec(bad)

    spec = ds.load_spec()
    spec["photo_sources"]["test"].append(spec["photo_sources"]["train"][0])
    check(spec, "both train and test")
    spec = ds.load_spec()
    del spec["counts"]["form"]  # a v1 spec (fewer kinds) is refused, naming the field
    check(spec, "'counts' must map")
    spec = ds.load_spec()
    spec["counts"]["table"]["test"] += 1
    check(spec, "add up to")
    spec = ds.load_spec()
    del spec["font_files"]
    check(spec, "missing field 'font_files'")
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
