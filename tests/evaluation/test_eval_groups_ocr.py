"""`evaluate` reports every metric per image group and judges pages with a real OCR engine."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from token_reduction.evaluation.groups import GroupedMetrics, image_groups
from token_reduction.evaluation.harness import evaluate
from token_reduction.evaluation.ocr import OcrUnavailableError, load_ocr_engine

FONT = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
LINES = ["HARBOR MARKET", "fresh bread daily", "open until nine"]


def _engine() -> str:
    for name in ("tesseract", "rapidocr"):
        try:
            load_ocr_engine(name)
            return name
        except OcrUnavailableError:
            continue
    pytest.skip("no OCR engine installed (pip install '.[ocr]' or apt-get install tesseract-ocr)")


def _page(folder: Path, name: str, paper: tuple[int, int, int], ink: tuple[int, int, int], group: str) -> None:
    image = Image.new("RGB", (224, 224), paper)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 20)
    boxes, words, y = [], [], 20
    for line in LINES:
        x = 12
        for word in line.split():
            box = draw.textbbox((x, y), word, font=font)
            draw.text((x, y), word, font=font, fill=ink)
            boxes.append(list(box))
            words.append(word)
            x = box[2] + 8
        y += 60
    image.save(folder / f"{name}.png")
    sidecar = {"kind": "document", "split": "test", "source": "test", "group": group, "boxes": boxes, "words": words}
    (folder / f"{name}.json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def page_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from token_reduction.extraction.run import extract

    images = tmp_path_factory.mktemp("pages")
    _page(images, "white_page", (255, 255, 255), (10, 10, 10), "white")
    _page(images, "dark_page", (20, 30, 80), (240, 240, 230), "dark")
    blank = Image.new("RGB", (224, 224), (200, 40, 40))
    blank.save(images / "blank.png")
    (images / "blank.json").write_text(json.dumps({"kind": "blank", "split": "train", "group": "tinted", "boxes": [], "words": []}))
    cache = tmp_path_factory.mktemp("cache") / "cache"
    extract("pixels:16@224", images, cache, batch_size=4, progress=False)
    return cache


def test_image_groups_and_grouped_means() -> None:
    assert image_groups({"kind": "document", "group": "dark"}) == ["pages", "pages/dark"]
    assert image_groups({"kind": "photo", "group": "photo"}) == ["photos"]
    assert image_groups({}) == []
    grouped = GroupedMetrics(("text_recall",))
    grouped.update("text_recall", np.array([1.0, 0.0, float("nan")]), [["pages", "pages/white"], ["pages", "pages/dark"], ["photos"]])
    result = grouped.compute()
    assert result["all"]["text_recall"] == pytest.approx(0.5) and result["pages/white"]["text_recall"] == 1.0
    assert result["photos"]["text_recall"] is None  # no defined value: no number invented
    assert list(result)[:2] == ["all", "pages"]


def test_ocr_judge_reads_pages_and_ranks_selections(page_cache: Path, tmp_path: Path) -> None:
    engine = _engine()
    results = evaluate(
        page_cache, ["random", "contrast"], [0.5, 1.0], split="test", out_dir=tmp_path / "eval", neutral=tmp_path / "neutral",
        neutral_overrides={"steps": 3, "width": 32, "depth": 1, "heads": 2}, ocr=engine, ocr_keep=(0.5, 1.0), ocr_workers=2,
    )
    full = results["ocr"]["full_page"]
    assert results["ocr"]["pages"] == 2 and full["all"]["ocr_recall"] >= 0.8
    rows = {(row["method"], row["label"]): row for row in results["rows"]}
    assert rows[("contrast", "1")]["metrics"]["ocr_recall"] == pytest.approx(full["all"]["ocr_recall"])  # nothing dropped
    contrast, random = rows[("contrast", "0.5")]["groups"], rows[("random", "0.5")]["groups"]
    for group in ("pages/white", "pages/dark"):
        assert contrast[group]["ocr_recall"] >= random[group]["ocr_recall"]
        assert contrast[group]["text_recall"] > random[group]["text_recall"]
    assert rows[("contrast", "1")]["metrics"]["ocr_recall_decoded"] is not None  # pixels: the decoded page is read too
    assert rows[("contrast", "0.5")]["metrics"]["ocr_recall_decoded"] is None  # ... at the largest OCR budget only
    report = (tmp_path / "eval" / "results.md").read_text()
    assert "OCR word recall (dropped patches greyed out), by image group" in report and "| full page (ceiling) |" in report


def test_missing_ocr_engine_fails_before_any_work(page_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(name: str = "auto"):
        raise OcrUnavailableError("no OCR engine: pip install '.[ocr]'")

    monkeypatch.setattr("token_reduction.evaluation.ocr_judge.load_ocr_engine", unavailable)
    with pytest.raises(OcrUnavailableError):
        evaluate(page_cache, ["random"], [0.5], split="test", out_dir=tmp_path / "eval", neutral=tmp_path / "n",
                 neutral_overrides={"steps": 1, "width": 32, "depth": 1, "heads": 2}, ocr="auto")
    assert not (tmp_path / "n").exists()  # refused before the neutral reconstructor was trained
    assert not (tmp_path / "eval" / "results.json").exists()



def test_ocr_budgets_outside_keep_are_reported_not_read(page_cache: Path, tmp_path: Path) -> None:
    engine = _engine()
    messages: list[str] = []
    results = evaluate(page_cache, ["random"], [0.5], split="test", out_dir=tmp_path / "eval", neutral=tmp_path / "neutral",
                       neutral_overrides={"steps": 1, "width": 32, "depth": 1, "heads": 2}, ocr=engine, ocr_keep=(0.25, 0.5),
                       log=messages.append)
    assert any("[0.25]" in m and "skips" in m for m in messages)
    assert results["rows"][0]["metrics"]["ocr_recall"] is not None  # 0.5 is read
